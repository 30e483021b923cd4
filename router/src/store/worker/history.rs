//! The storage thread's side of conversation history (layout and write path:
//! `store::history`).

use std::borrow::Cow;
use std::collections::{HashMap, HashSet, VecDeque};
use std::ops::Bound;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::maps::NameMap;
use bytes::Bytes;

use super::super::histlog;
use super::super::history::{
    chunk_ids, chunk_key, chunk_last_at, chunk_prefix, chunk_rec, chunk_seq, decode_u64, dm_conv,
    entry_conv, entry_user, last_record_at, log_chunk_value, mark_key, mark_prefix, parse_chunk,
    parse_conv, rec_msg_id, records, room_conv, user_key, user_prefix, ChunkBody, ConvName,
    ConvSummary, HistChunk, HistMsg, HistPage, HistQuery, HistoryOptions, IdRanges, RawRecord,
    Segment, CHUNK_TAG, PAGE_MSG_OVERHEAD, RECORD_FIXED, ROOMS_SWEPT_TAG,
};
use super::{member_key, now_us, Ks, Op, Worker, CACHE_MAX, ROOM_PREFIX};
use crate::store::{Durability, StoreError, StoreResult};

/// The `rooms` key of the room record of `name` (the bytes of a room conversation id).
fn room_key(name: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(ROOM_PREFIX.len() + name.len());
    k.extend_from_slice(ROOM_PREFIX);
    k.extend_from_slice(name);
    k
}

/// Chunks appended to a conversation between two age trims (with a max age).
const AGE_TRIM_EVERY: u32 = 64;

/// A segment (a stored chunk) holds at most this many messages ...
const SEGMENT_MAX_MSGS: u32 = 512;
/// ... or about this many bytes; past either the conversation starts a new one.
const SEGMENT_MAX_BYTES: usize = 64 * 1024;

/// Longest a tail that is not hot keeps a payload by reference. A shared payload is a
/// slice of the read buffer it came in, which it keeps whole: a small payload from a
/// buffer of other bytes (padding, pings, a big ephemeral Send) kept for the whole
/// `--history-flush-every` would hold far more memory than the tail counts. Past this age
/// the tails copy their payloads (`Segment::unshare`); under load their budget writes
/// them sooner, uncopied.
const PIN_MAX: std::time::Duration = std::time::Duration::from_millis(50);

/// Longest a hot tail keeps a segment's payloads by reference. Its conversation goes
/// through its window twice a flush interval, so the window mostly drops a segment (and
/// lets its read buffers go) before this age, and the copy is never made: copying every
/// payload at `PIN_MAX` cost the storage thread half its user time at 16 × 1 KiB
/// (BENCHMARKS.md, seventeenth pass). Bounded all the same: a segment that outlives it
/// (a hot conversation gone quiet, the newest of its window) is copied, so a read buffer
/// stays held by a tail for at most this long.
const HOT_PIN_MAX: std::time::Duration = std::time::Duration::from_millis(250);

/// Most history log files compacted per flush (each at most about `histlog::FILE_MAX`
/// bytes): compaction keeps up with the writes, as each byte it moves frees another.
const COMPACT_PER_FLUSH: usize = 4;

/// An entry compaction moves: key, count, newest ts, where it was, its data.
/// A chunk to put: key, count, newest ts, records (in pieces), msg_id ranges, where its
/// last record starts.
type PutChunk<'a> = (&'a [u8], u32, u64, Vec<&'a [u8]>, &'a IdRanges, u32);
type Move<'a> = (Vec<u8>, u32, u64, histlog::Loc, &'a [u8], IdRanges);

/// Most conversation entries one ListConversations looks at (a bound on the work of one
/// request, whatever the user's number of conversations).
pub(crate) const CONV_SCAN_MAX: usize = 10_000;

/// A conversation's position, cached (read from disk on first use).
#[derive(Clone, Copy, Debug)]
struct ConvState {
    /// Seq of the next message.
    next_seq: u64,
    /// First seq of the oldest chunk on disk (when there is none: the first seq appended
    /// after the state was read or the chunks trimmed, so memory's messages are visible).
    oldest: u64,
    /// Chunks written since the last trim.
    since_trim: u32,
    /// The participants' entries of a direct conversation are known to exist.
    indexed: bool,
    /// Newest `server_ts_us` of its messages (0: none): its newest stored chunk's, when
    /// the state was read, then the newest appended. What ListConversations sorts by,
    /// with no chunk read.
    last_ts: u64,
    /// Bytes of the chunks this process wrote and has not trimmed (what
    /// `HistoryOptions::max_bytes` bounds). It starts at 0 when the state is read from
    /// the store (after a restart, or after the cache of states was emptied past
    /// `CACHE_MAX` conversations): older chunks count only once trimming reads them, so
    /// the bound can be exceeded by what was on disk then.
    bytes: u64,
    /// The conversation's rate as the shards saw it (router timestamps; appends reach
    /// the storage thread in bursts when its queue backs up): messages appended since
    /// `rate_from_ts`, a start renewed every two flush intervals or so.
    rate_from_ts: u64,
    rate_count: u64,
}

impl ConvState {
    /// Notes `count` messages sent from `first_ts` on for the rate.
    fn note_rate(&mut self, count: u64, first_ts: u64, every: std::time::Duration) {
        let window = u64::try_from(every.as_micros().saturating_mul(2)).unwrap_or(u64::MAX);
        if self.rate_count == 0 || self.last_ts.saturating_sub(self.rate_from_ts) > window {
            self.rate_from_ts = first_ts;
            self.rate_count = 0;
        }
        self.rate_count += count;
    }

    /// Its rate is known (64 messages over a tenth of `every` at least, at most 100 ms:
    /// a shard stamps a read buffer's messages, hundreds, with about the same time, and
    /// a sender's writes come in bursts), and at that rate it goes through its window
    /// of `keep` messages [`CHURN`] times within `every` (the flush interval): most of
    /// what its tail holds would be dropped before the next flush, were it not written
    /// now.
    fn churns(&self, keep: u64, every: std::time::Duration) -> bool {
        let span_us = u128::from(self.last_ts.saturating_sub(self.rate_from_ts));
        let every_us = every.as_micros();
        self.rate_count >= 64
            && span_us >= (every_us / 10).min(100_000)
            && u128::from(self.rate_count) * every_us >= CHURN * u128::from(keep) * span_us
    }
}

/// A conversation's messages not yet written, oldest segment first.
#[derive(Default)]
struct Tail {
    segs: VecDeque<Segment>,
    /// Bytes allocated by `segs`.
    bytes: usize,
    /// Named in [`HistState::pinned`].
    pinned: bool,
    /// Kept past the memory budget (see [`Worker::hist_relieve`]); counted in
    /// [`HistState::hot_bytes`].
    hot: bool,
}

/// Which tails [`Worker::hist_write_tails`] writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tails {
    /// Every one, with every conversation entry and read mark.
    All,
    /// Those not hot (the hot ones stay, with the flush that is due), with the entries
    /// and read marks of their conversations.
    Cold,
    /// At most this many (a slice of a flush that is due), without entries or read
    /// marks: they wait for the flush's last slice, which is `All`.
    Slice(usize),
}

/// Most tails one slice of a due flush writes (~4 µs each): the requests that came
/// meanwhile are handled between slices.
const FLUSH_SLICE: usize = 2_048;
#[cfg(test)]
pub(crate) const FLUSH_SLICE_FOR_TESTS: usize = FLUSH_SLICE;

/// A conversation entry or read mark noted in memory, not yet written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Noted {
    /// An entry's last sent seq (0: create it if missing), a mark's seq.
    seq: u64,
    /// The messages up to `seq` are written: it may be, a slice at a time
    /// ([`Worker::hist_write_noted`]).
    ready: bool,
    /// An entry of a conversation with nothing stored when it was noted: written without
    /// a read of the stored one. One left from an earlier conversation of the two
    /// (deleted, or trimmed away whole) names a seq of that one, which numbered from 1
    /// too: nothing to keep. (The reads were what a storm of new conversations cost.)
    blind: bool,
}

impl Noted {
    /// Notes `seq`: a larger one waits for its messages to be written.
    fn note(&mut self, seq: u64) {
        if seq > self.seq {
            self.seq = seq;
            self.ready = false;
        }
    }
}

/// Entries and marks one step of [`Worker::hist_write_noted`] writes (each but a blind
/// entry a read of the stored one first).
const NOTED_SLICE: usize = 256;

/// Entries and marks waiting to be written past which they are written without a time
/// budget, down to half (each ~100 bytes in memory: ~100 MiB).
const NOTED_MAX: usize = 1 << 20;

/// How long the noted entries and marks that are due are written for at a time: a
/// flush after a storm of new conversations wrote 1.3 million of them in one go (a
/// read each) and held every other request 9–25 s.
#[cfg(not(test))]
const NOTED_BUDGET: Duration = Duration::from_millis(5);
/// (Tests: one slice a step, so that the ticks write the rest.)
#[cfg(test)]
const NOTED_BUDGET: Duration = Duration::ZERO;

/// A tail is hot (kept past the memory budget) when its conversation goes through its
/// window this many times a flush interval: half of what it holds, at least, is
/// dropped in memory before it would be written.
const CHURN: u128 = 2;

/// History state of the storage thread.
pub(crate) struct HistState {
    pub(crate) opts: HistoryOptions,
    /// Tails are written in the round that appended them (sync durability, or no memory
    /// budget).
    write_through: bool,
    /// A write-through append of this round waits for the round's end.
    pub(crate) round_flush: bool,
    convs: NameMap<Vec<u8>, ConvState>,
    /// Messages not yet written, per conversation (every one has a `convs` entry).
    tails: NameMap<Vec<u8>, Tail>,
    /// Bytes allocated by `tails`: past `opts.memory_bytes` they are written.
    tail_bytes: usize,
    /// The part of `tail_bytes` of hot tails (kept past the budget, up to
    /// `opts.hot_bytes`: see [`Worker::hist_relieve`]).
    hot_bytes: usize,
    /// When the tails are written next (set by the first append after a write).
    next_flush: Option<Instant>,
    /// When the payloads the tails hold by reference are next due to be copied: the
    /// oldest one's age past [`PIN_MAX`], or [`HOT_PIN_MAX`] in a hot tail.
    unshare_at: Option<Instant>,
    /// The conversations whose tails hold payloads by reference (each once).
    pinned: Vec<Vec<u8>>,
    /// Users' conversation entries to write with the tails (key → last sent seq; 0:
    /// create if missing). Merged here so one batch never writes a key twice.
    pending: NameMap<Vec<u8>, Noted>,
    /// Read marks to write with the tails (key → seq; the larger of it and the stored
    /// one is kept).
    marks: NameMap<Vec<u8>, Noted>,
    /// The keys of `pending` (false) and `marks` (true) that became [`Noted::ready`]:
    /// written a slice at a time ([`Worker::hist_write_noted`]), between requests. (A key
    /// whose entry went since, deleted or written, or is no longer ready, is passed over.)
    ready_keys: std::collections::VecDeque<(bool, Vec<u8>)>,
    /// `convs` is trimmed past this many states ([`Worker::hist_trim_cache`]).
    trim_at: usize,
    /// (conversation, msg_id) → seq of the oldest message of recently answered pages:
    /// the `before` of the next page back, found without scanning for it (a lookup that
    /// scans is bounded: `HistoryOptions::lookup_chunks`).
    cursors: NameMap<(Vec<u8>, u64), u64>,
    /// The cursors `cursors` held when it last filled up, still looked up: the last
    /// [`CURSORS_MAX`] / 2 pages answered always have theirs, however many came before.
    cursors_old: NameMap<(Vec<u8>, u64), u64>,
    /// The users `convs`, `tails`, `pending` and `marks` may name (see [`NamesSeen`]).
    names: NamesSeen,
}

/// Whether `conv` is a direct conversation of one of `users`.
fn direct_with_any(conv: &[u8], users: &[&[u8]]) -> bool {
    match parse_conv(conv) {
        Some(ConvName::Direct(a, b)) => users.iter().any(|&u| u == a || u == b),
        _ => false,
    }
}

/// Most names [`NamesSeen`] holds (~4 MiB); past it, every forget walks.
const NAMES_SEEN_MAX: usize = 1 << 18;

/// A superset of the users the history cache names (its direct conversations' two
/// users, its entries' and marks' users), by hash: forgetting users none of whom it may
/// name needs no walk of the whole cache ([`Worker::hist_forget_users`]; with 100 000
/// conversations cached a walk took 70-90 ms). Noted as keys are added; made exact again
/// by each walk; past [`NAMES_SEEN_MAX`] it gives up (`all`) until the next walk.
#[derive(Default)]
struct NamesSeen {
    set: rustc_hash::FxHashSet<u64>,
    /// Gave up: it may name anyone.
    all: bool,
}

impl NamesSeen {
    fn hash(name: &[u8]) -> u64 {
        use std::hash::BuildHasher;
        rustc_hash::FxBuildHasher.hash_one(name)
    }

    fn note(&mut self, name: &[u8]) {
        if self.all {
            return;
        }
        self.set.insert(Self::hash(name));
        if self.set.len() > NAMES_SEEN_MAX {
            self.set = Default::default();
            self.all = true;
        }
    }

    /// The users of a conversation id (a direct conversation's two).
    fn note_conv(&mut self, conv: &[u8]) {
        if let Some(ConvName::Direct(a, b)) = parse_conv(conv) {
            self.note(a);
            self.note(b);
        }
    }

    /// The users of an entry or read mark key.
    fn note_key(&mut self, key: &[u8]) {
        if let Some(u) = entry_user(key) {
            self.note(u);
        }
        if let Some(conv) = entry_conv(key) {
            self.note_conv(conv);
        }
    }

    /// Whether the cache may name `name`.
    fn may_name(&self, name: &[u8]) -> bool {
        self.all || self.set.contains(&Self::hash(name))
    }
}

/// Where a user's history deletion is ([`Worker::hist_delete_user_slice`]).
#[derive(Default)]
pub(super) struct HistCursor {
    /// The last of the user's conversation entries deleted (the next is after it).
    entry: Option<Vec<u8>>,
    /// The next entries, read ahead.
    entries: VecDeque<Vec<u8>>,
    /// Direct conversations to delete before the entries are scanned: those whose
    /// entries were only in memory ([`Worker::hist_forget_user`]) ...
    pub(super) extra: VecDeque<Vec<u8>>,
    /// ... and those of them deleted already (the scan deletes only their entries: a
    /// chunk's log record is released once).
    extra_done: HashSet<Vec<u8>>,
    /// The direct conversation under way: its last chunk deleted (its entries go once
    /// its chunks are gone).
    chunk: Option<Vec<u8>>,
    /// Every entry is deleted: its read marks go, after `mark`.
    entries_done: bool,
    mark: Option<Vec<u8>>,
}

/// Keys a slice deletes (when there are) before its time is looked at: each makes
/// progress, however slow its reads.
const SLICE_MIN_KEYS: usize = 64;

/// What a slice of a deletion may still do: keys to delete, and until when.
pub(super) struct Budget {
    keys: usize,
    until: Option<Instant>,
    /// Keys deleted so far.
    used: usize,
}

impl Budget {
    /// `keys` keys, for `time` (a deletion's slice: `worker::deletion`).
    pub(super) fn new(keys: usize, time: std::time::Duration) -> Budget {
        Budget {
            keys,
            until: Instant::now().checked_add(time),
            used: 0,
        }
    }

    /// Nothing left: the slice stops before its next key (not before its first
    /// [`SLICE_MIN_KEYS`]: each slice makes progress).
    pub(super) fn spent(&self) -> bool {
        self.keys == 0
            || (self.used >= SLICE_MIN_KEYS && self.until.is_some_and(|t| Instant::now() >= t))
    }

    /// Counts `n` keys deleted.
    pub(super) fn take(&mut self, n: usize) {
        self.keys = self.keys.saturating_sub(n);
        self.used = self.used.saturating_add(n);
    }
}

/// The end of a range scan of the keys under `prefix`: bounded, so that the scan stops
/// there instead of walking on through what follows (the tombstones a deletion leaves
/// under the next names: 50 000 of them held a scan for 35 ms).
pub(super) fn past(prefix: &[u8]) -> Bound<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Bound::Excluded(end);
        }
    }
    Bound::Unbounded
}

/// The keys under `prefix` after `after` (all of them: None), as a range to scan; it ends
/// at the prefix's end ([`past`]).
pub(super) fn under(prefix: &[u8], after: Option<&[u8]>) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    let from = match after {
        Some(k) => Bound::Excluded(k.to_vec()),
        None => Bound::Included(prefix.to_vec()),
    };
    (from, past(prefix))
}

/// Conversation entries read at a time by [`Worker::hist_delete_user_slice`].
const ENTRIES_PER_READ: usize = 256;

/// Most entries in [`HistState::cursors`] and [`HistState::cursors_old`] together.
const CURSORS_MAX: usize = 65_536;

/// What a lookup of a msg_id in a conversation found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Found {
    /// The seq of the visible message.
    Seq(u64),
    /// No visible message of the conversation has it.
    Absent,
    /// Not in the chunks one lookup may look at (`HistoryOptions::lookup_bounds`).
    Beyond,
}

/// What one msg_id lookup may still do.
struct LookupBudget {
    /// Chunks (or segments) whose records it may still read.
    reads: usize,
    /// Chunk pointers (or segments) it may still look at.
    looks: usize,
    /// Chunk pointers (or segments) it looked at.
    looked: u64,
}

impl LookupBudget {
    /// Takes one look at a chunk's pointer (false: none left).
    fn look(&mut self) -> bool {
        let Some(n) = self.looks.checked_sub(1) else {
            return false;
        };
        self.looks = n;
        self.looked += 1;
        true
    }

    /// Takes one read of a chunk's records (false: none left).
    fn read(&mut self) -> bool {
        self.reads = match self.reads.checked_sub(1) {
            Some(n) => n,
            None => return false,
        };
        true
    }
}

impl HistState {
    /// The seq of the page cursor (`conv`, `msg_id`), if a recent page ended there.
    fn cursor(&self, conv: &[u8], msg_id: u64) -> Option<u64> {
        let k = (conv.to_vec(), msg_id);
        self.cursors
            .get(&k)
            .or_else(|| self.cursors_old.get(&k))
            .copied()
    }

    /// Notes that a page of `conv` ended at `msg_id`, whose seq is `seq`.
    fn note_cursor(&mut self, conv: Vec<u8>, msg_id: u64, seq: u64) {
        if self.cursors.len() >= CURSORS_MAX / 2 {
            self.cursors_old = std::mem::take(&mut self.cursors);
        }
        self.cursors.insert((conv, msg_id), seq);
    }
}

impl HistState {
    pub(crate) fn new(opts: HistoryOptions, durability: Durability) -> Self {
        HistState {
            opts,
            write_through: durability == Durability::Sync || opts.memory_bytes == 0,
            round_flush: false,
            convs: NameMap::default(),
            tails: NameMap::default(),
            tail_bytes: 0,
            hot_bytes: 0,
            next_flush: None,
            unshare_at: None,
            pinned: Vec::new(),
            pending: NameMap::default(),
            marks: NameMap::default(),
            ready_keys: Default::default(),
            trim_at: CACHE_MAX,
            cursors: NameMap::default(),
            cursors_old: NameMap::default(),
            names: NamesSeen::default(),
        }
    }

    /// When the storage thread must wake up to write the tails, if any are held.
    pub(crate) fn next_flush(&self) -> Option<Instant> {
        if !self.ready_keys.is_empty() {
            return Some(Instant::now());
        }
        match (self.next_flush, self.unshare_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Io(format!("corrupt history {what}"))
}

fn log_err(e: std::io::Error) -> StoreError {
    StoreError::Io(format!("history log: {e}"))
}

fn to_msg(r: RawRecord<'_>) -> HistMsg {
    HistMsg {
        from_user: String::from_utf8_lossy(r.0).into_owned(),
        payload: bytes::Bytes::copy_from_slice(r.3),
        msg_id: r.1,
        ts_us: r.2,
    }
}

/// Whole records at the start of `data` (a shard's chunk).
fn records_in(data: &[u8]) -> usize {
    let (mut p, mut n) = (0, 0);
    while let Some(r) = data.get(p..).and_then(chunk_rec) {
        p += r.len;
        n += 1;
    }
    n
}

/// Bytes ahead of the record being read that [`Worker::hist_append`]'s first walk asks
/// for, two lines a record (a record of a 64-byte message is ~100 bytes): a dozen lines,
/// several records of small messages.
const PREFETCH_AHEAD: usize = 768;

impl Worker {
    fn age_cutoff(&self) -> u64 {
        match self.hist.opts.max_age {
            Some(age) => now_us().saturating_sub(age.as_micros() as u64),
            None => 0,
        }
    }

    /// The first seq a query may show.
    fn visible_from(&self, st: &ConvState) -> u64 {
        st.next_seq
            .saturating_sub(self.hist.opts.per_conversation)
            .max(st.oldest)
            .max(1)
    }

    fn conv_state(&mut self, conv: &[u8]) -> StoreResult<ConvState> {
        if let Some(st) = self.hist.convs.get(conv) {
            return Ok(*st);
        }
        let prefix = chunk_prefix(conv);
        let mut next_seq = 1;
        let mut last_ts = 0;
        let mut oldest = None;
        // Its oldest chunk first, then its newest from the other end of the same scan:
        // a conversation with none (most, under a storm of messages to new names) costs
        // one forward seek, and one with chunks one scan, not two (a reverse seek costs
        // about twice a forward one: half of the storage thread's time went to the two
        // scans under such a storm).
        let mut chunks = self.dbs.history.prefix(&prefix);
        if let Some(g) = chunks.next() {
            let (first_k, first_v) = g.into_inner()?;
            oldest = Some(chunk_seq(&prefix, &first_k).ok_or_else(|| corrupt("key"))?);
            let (k, v) = match chunks.next_back() {
                Some(g) => g.into_inner()?,
                None => (first_k, first_v),
            };
            let seq = chunk_seq(&prefix, &k).ok_or_else(|| corrupt("key"))?;
            let (count, ts, _) = parse_chunk(&v).ok_or_else(|| corrupt("chunk"))?;
            next_seq = seq + u64::from(count);
            last_ts = ts;
        }
        let st = ConvState {
            next_seq,
            oldest: oldest.unwrap_or(next_seq),
            since_trim: 0,
            indexed: false,
            last_ts,
            bytes: 0,
            rate_from_ts: 0,
            rate_count: 0,
        };
        self.hist.names.note_conv(conv);
        self.hist.convs.insert(conv.to_vec(), st);
        Ok(st)
    }

    /// Every noted entry and mark left in the maps is ready to be written (their
    /// conversations' tails are): queued for [`Worker::hist_write_noted`]. (Written with
    /// the messages, those that need no read of the stored one, 200 000 after a second of
    /// a storm of new conversations, held other requests 1.5-1.9 s.)
    fn hist_ready_noted(&mut self) {
        let h = &mut self.hist;
        for (k, e) in h.pending.iter_mut().filter(|(_, e)| !e.ready) {
            e.ready = true;
            h.ready_keys.push_back((false, k.clone()));
        }
        for (k, e) in h.marks.iter_mut().filter(|(_, e)| !e.ready) {
            e.ready = true;
            h.ready_keys.push_back((true, k.clone()));
        }
    }

    /// Writes the conversation entries and read marks that are ready: all of them, or
    /// (`budget`) slices of [`NOTED_SLICE`] until it has passed, the rest at the next
    /// ticks (requests are answered between). Each but a blind entry is a read of the
    /// stored one first.
    fn hist_write_noted(&mut self, budget: Option<Duration>) {
        let t0 = Instant::now();
        let n = if budget.is_some() {
            NOTED_SLICE
        } else {
            usize::MAX
        };
        // Past NOTED_MAX waiting, no time budget down to half of it: what waits in memory
        // stays bounded however fast conversations come (each slice answers nothing
        // meanwhile, as the whole write did).
        let waiting = |h: &HistState| h.ready_keys.len();
        let mut unbounded = budget.is_none() || waiting(&self.hist) > NOTED_MAX;
        while !self.hist.ready_keys.is_empty() {
            let h = &mut self.hist;
            let (mut entries, mut marks) = (Vec::new(), Vec::new());
            for _ in 0..n {
                let Some((mark, k)) = h.ready_keys.pop_front() else {
                    break;
                };
                let map = if mark { &mut h.marks } else { &mut h.pending };
                if !map.get(&k).is_some_and(|e| e.ready) {
                    continue;
                }
                let Some((k, e)) = map.remove_entry(&k) else {
                    continue;
                };
                if mark {
                    marks.push((k, e.seq));
                } else {
                    entries.push((k, e));
                }
            }
            self.hist_write_entries(entries, marks);
            self.stats
                .history_entry_slices
                .fetch_add(1, Ordering::Relaxed);
            unbounded = unbounded && (budget.is_none() || waiting(&self.hist) > NOTED_MAX / 2);
            if !unbounded && budget.is_some_and(|b| t0.elapsed() >= b) {
                return;
            }
        }
    }

    /// Writes `user`'s noted entries and marks, ready or not (a ListConversations reads
    /// them from the store).
    fn hist_write_noted_of(&mut self, user: &[u8]) {
        let h = &mut self.hist;
        let of_user = |k: &Vec<u8>, _: &mut Noted| entry_user(k) == Some(user);
        let entries: Vec<(Vec<u8>, Noted)> = h.pending.extract_if(of_user).collect();
        let marks = h
            .marks
            .extract_if(of_user)
            .map(|(k, e)| (k, e.seq))
            .collect();
        self.hist_write_entries(entries, marks);
    }

    /// Writes conversation entries (key, last sent seq; 0: only if missing, unless
    /// blind) and read marks (key, seq: the larger of it and the stored one).
    fn hist_write_entries(&mut self, entries: Vec<(Vec<u8>, Noted)>, marks: Vec<(Vec<u8>, u64)>) {
        for (k, Noted { seq, blind, .. }) in entries {
            if seq == 0 && !blind {
                // Only "exists": keep a value already on disk.
                match self.dbs.history.contains_key(&k) {
                    Ok(true) => continue,
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "history entry lookup failed");
                        continue;
                    }
                }
            }
            self.ops
                .push(Op::Put(Ks::History, k, seq.to_be_bytes().to_vec()));
        }
        for (k, seq) in marks {
            let stored = match self.dbs.history.get(&k) {
                Ok(v) => v.map_or(0, |v| decode_u64(&v)),
                Err(e) => {
                    tracing::warn!(error = %e, "read mark lookup failed");
                    continue;
                }
            };
            if seq > stored {
                self.ops
                    .push(Op::Put(Ks::History, k, seq.to_be_bytes().to_vec()));
            }
        }
    }

    /// Notes `user`'s entry of `conv` with its last sent `seq` (0: only that it exists;
    /// `blind`: see [`Noted::blind`]).
    fn note_entry(&mut self, user: &[u8], conv: &[u8], seq: u64, blind: bool) {
        // None for a user being deleted (`worker::deletion`): its entries are.
        if self.deleting_bytes(user) {
            return;
        }
        let h = &mut self.hist;
        let e = h.pending.entry(user_key(user, conv)).or_insert_with(|| {
            h.names.note(user);
            h.names.note_conv(conv);
            Noted {
                blind,
                ..Noted::default()
            }
        });
        e.note(seq);
    }

    /// Appends a loop turn's messages of one shard to their conversations' tails, and
    /// writes the tails if the mode or the memory budget asks for it.
    pub(crate) fn hist_append(&mut self, chunks: Vec<HistChunk>) -> StoreResult<()> {
        if self.hist.opts.per_conversation == 0 {
            return Ok(());
        }
        if self.disk_full() {
            // Not written (`store::disk`); counted.
            let n: usize = chunks.iter().map(|c| records_in(&c.data)).sum();
            self.stats
                .history_dropped
                .fetch_add(n as u64, Ordering::Relaxed);
            return Ok(());
        }
        for HistChunk { conv, data, shared } in chunks {
            if data.is_empty() {
                continue;
            }
            let Some(name) = parse_conv(&conv) else {
                return Err(StoreError::Invalid("bad conversation id".into()));
            };
            if let ConvName::Direct(a, b) = &name {
                // A conversation with an account being deleted is being deleted: its
                // messages make none (as with an account already deleted), so that a
                // later owner of the name never finds them (`worker::deletion`).
                if self.deleting_bytes(a) || self.deleting_bytes(b) {
                    continue;
                }
            }
            let mut st = self.conv_state(&conv)?;
            if let (false, ConvName::Direct(a, b)) = (st.indexed, &name) {
                // A message to a user without an account (refused NOT_FOUND) or to one
                // deleted meanwhile makes no conversation. Checked once per conversation
                // and process (the check is cached; deleting an account drops the state).
                let (a, b) = (String::from_utf8_lossy(a), String::from_utf8_lossy(b));
                let (a, b) = (a.into_owned(), b.into_owned());
                if !self.account_exists(&a)? || !self.account_exists(&b)? {
                    continue;
                }
                // (Nothing stored of the conversation: no entry to keep.)
                let blind = st.next_seq == 1;
                self.note_entry(a.as_bytes(), &conv, 0, blind);
                self.note_entry(b.as_bytes(), &conv, 0, blind);
                st.indexed = true;
            }
            if let (false, ConvName::Room(r)) = (st.indexed, &name) {
                // A room that is gone (deleted while this append was on its way) keeps
                // no history: its conversation was removed with it, and must not come
                // back (a room made later with the name starts empty). Checked once per
                // conversation and process; deleting the room drops the state.
                self.commit()?;
                if !self.dbs.rooms.contains_key(room_key(r))? {
                    continue;
                }
                st.indexed = true;
            }
            let first = st.next_seq;
            // The last message each sender sent in this chunk (most chunks have one or
            // two senders: the previous record's is checked before the map), and the
            // whole records (the shard encoded them; a torn one would end the chunk).
            let mut senders: NameMap<&[u8], u64> = NameMap::default();
            let mut last: Option<(&[u8], u64)> = None;
            let mut count = 0u64;
            let mut whole = 0usize;
            let mut first_ts = u64::MAX;
            while let Some(r) = data.get(whole..).and_then(chunk_rec) {
                // The shard wrote these records on another core: each line comes
                // over when first read, and the walk waits for every one (the reads
                // of a record's lengths were half of this function's samples). Asked
                // for a few lines ahead, they come while earlier records are read.
                let ahead = data.as_ptr().wrapping_add(whole + PREFETCH_AHEAD);
                crate::outbuf::prefetch(ahead);
                crate::outbuf::prefetch(ahead.wrapping_add(64));
                let seq = first + count;
                st.last_ts = st.last_ts.max(r.ts);
                first_ts = first_ts.min(r.ts);
                match &mut last {
                    Some((f, s)) if *f == r.from => *s = seq,
                    _ => {
                        if let Some((f, s)) = last {
                            senders.insert(f, s);
                        }
                        last = Some((r.from, seq));
                    }
                }
                whole += r.len;
                count += 1;
            }
            if let Some((f, s)) = last {
                senders.insert(f, s);
            }
            for (from, seq) in senders {
                self.note_entry(from, &conv, seq, false);
            }
            st.note_rate(count, first_ts, self.hist.opts.flush_every);
            st.next_seq = first + count;
            let keep_from = st.next_seq.saturating_sub(self.hist.opts.per_conversation);
            if let Some(c) = self.hist.convs.get_mut(&conv) {
                *c = st;
            }
            let key = (!shared.is_empty()).then(|| conv.clone());
            let tail = match self.hist.tails.get_mut(&conv) {
                Some(t) => t,
                None => {
                    self.hist.names.note_conv(&conv);
                    self.hist.tails.entry(conv).or_default()
                }
            };
            if let Some(key) = key.filter(|_| !tail.pinned) {
                tail.pinned = true;
                self.hist.pinned.push(key);
            }
            let before = tail.bytes;
            // Bytes still to store: the records' (in `data`) and the shared payloads'.
            let mut left_recs = whole;
            let mut left = whole + shared.iter().map(Bytes::len).sum::<usize>();
            let mut shared = shared.into_iter();
            let data = data.get(..whole).unwrap_or_default();
            let mut seq = first;
            let mut p = 0usize;
            while let Some(r) = data.get(p..).and_then(chunk_rec) {
                let room = match tail.segs.back() {
                    Some(s) => s.count < SEGMENT_MAX_MSGS && s.records_len() < SEGMENT_MAX_BYTES,
                    None => false,
                };
                if !room {
                    // A segment after a full one is for a busy conversation: its full
                    // size at once; else room for this request's records (then it grows).
                    // `data` holds the records but not the shared payloads: its share
                    // of that size is the records' share of what is left.
                    let want = if tail.segs.is_empty() {
                        left_recs
                    } else {
                        SEGMENT_MAX_BYTES * left_recs / left.max(1)
                    };
                    let seg = Segment::new(seq, want.min(SEGMENT_MAX_BYTES) + r.len);
                    tail.bytes += seg.held();
                    tail.segs.push_back(seg);
                }
                let Some(seg) = tail.segs.back_mut() else {
                    break; // (pushed just above)
                };
                let held = seg.held();
                if r.shared {
                    // Its header, then the payload the shard shared.
                    let head = data.get(p..p + r.len).unwrap_or_default();
                    let payload = shared.next().unwrap_or_default();
                    let plen = payload.len();
                    let first = seg.shared_since.is_none();
                    seg.push_shared_record(head, payload, r.ts, rec_msg_id(head, r.from.len()));
                    // The copy comes when this segment's first shared payload is due:
                    // after PIN_MAX in a tail that is not hot, after HOT_PIN_MAX in a hot one.
                    if let Some(t) = seg.shared_since.filter(|_| first) {
                        let due = t + if tail.hot { HOT_PIN_MAX } else { PIN_MAX };
                        let at = self.hist.unshare_at.map_or(due, |u| u.min(due));
                        self.hist.unshare_at = Some(at);
                    }
                    p += r.len;
                    left = left.saturating_sub(r.len + plen);
                    left_recs = left_recs.saturating_sub(r.len);
                    seq += 1;
                } else {
                    // The run of inline records this segment takes, copied at once.
                    let (start, mut n, mut ts, mut last) = (p, 0u32, 0u64, p);
                    while seg.count + n < SEGMENT_MAX_MSGS
                        && seg.records_len() + (p - start) < SEGMENT_MAX_BYTES
                    {
                        match data.get(p..).and_then(chunk_rec) {
                            Some(r) if !r.shared => {
                                seg.ids.note(rec_msg_id(
                                    data.get(p..).unwrap_or_default(),
                                    r.from.len(),
                                ));
                                last = p;
                                p += r.len;
                                n += 1;
                                ts = ts.max(r.ts);
                            }
                            _ => break,
                        }
                    }
                    seg.push_records(data.get(start..p).unwrap_or_default(), n, ts, last - start);
                    left = left.saturating_sub(p - start);
                    left_recs = left_recs.saturating_sub(p - start);
                    seq += u64::from(n);
                }
                tail.bytes += seg.held() - held;
            }
            debug_assert_eq!(seq, first + count, "the shard encodes whole records");
            // Whole segments no query may show any more are never written.
            while tail.segs.front().is_some_and(|s| s.end_seq() <= keep_from) {
                if let Some(s) = tail.segs.pop_front() {
                    tail.bytes -= s.held();
                }
            }
            self.hist.tail_bytes = self.hist.tail_bytes - before + tail.bytes;
            if tail.hot {
                self.hist.hot_bytes = self.hist.hot_bytes - before + tail.bytes;
            }
        }
        let budget = self.hist.opts.memory_bytes;
        let hot_max = self.hist.opts.hot_bytes;
        if budget > 0 && self.hist.tail_bytes.saturating_sub(self.hist.hot_bytes) >= budget {
            self.hist_relieve()?;
        } else if hot_max > 0 && self.hist.hot_bytes > hot_max {
            self.hist_flush_sliced()?;
        } else if self.durability == Durability::Sync {
            // Sync durability: written once at the end of the round, before its commit
            // (`finish_round`), so in the group commit of the messages it holds. Flushing
            // per request (a message each in sync mode) cost half of sync throughput.
            self.hist.round_flush = true;
        } else if self.hist.write_through {
            self.hist_flush()?;
        } else if self.hist.next_flush.is_none() && !self.hist.tails.is_empty() {
            self.hist.next_flush = Some(Instant::now() + self.hist.opts.flush_every);
        }
        Ok(())
    }

    /// Writes the tails if they are due (called between rounds).
    pub(crate) fn hist_tick(&mut self) {
        if !self.hist.ready_keys.is_empty() {
            self.hist_write_noted(Some(NOTED_BUDGET));
            match self.commit() {
                Ok(()) => self.hist_trim_cache(),
                Err(e) => tracing::warn!(error = %e, "history write failed"),
            }
        }
        // (A flush due now writes the payloads kept by reference: no copy first.)
        if self.hist.next_flush.is_some_and(|t| t <= Instant::now()) {
            if self.hist.tails.len() > FLUSH_SLICE {
                // A slice now, the rest after the requests that came meanwhile (the
                // flush stays due, so the loop does not wait for one): a storm of
                // messages to new names left ~40 000 tails a second, whose write held
                // every request 130–160 ms.
                let r = self
                    .hist_write_tails(Tails::Slice(FLUSH_SLICE))
                    .and_then(|()| self.commit());
                if let Err(e) = r {
                    tracing::warn!(error = %e, "history write failed");
                }
                return;
            }
            let r = self.hist_flush_sliced().and_then(|()| self.commit());
            match r {
                // (Memory mode only: sync mode writes history in its rounds.) Files the
                // trims and compactions emptied go now, not at the next request.
                Ok(()) if self.durability == Durability::Memory => self.dbs.hlog.unlink_doomed(),
                Ok(()) => {}
                Err(e) => tracing::warn!(error = %e, "history write failed"),
            }
            // The one moment under steady load when no tail is held.
            self.hist_trim_cache();
        }
        if self.hist.unshare_at.is_some_and(|t| t <= Instant::now()) {
            self.hist_unshare();
            // A copy may take more room than the slices did: the hot tails' bound holds.
            let hot_max = self.hist.opts.hot_bytes;
            if hot_max > 0 && self.hist.hot_bytes > hot_max {
                if let Err(e) = self.hist_flush_sliced().and_then(|()| self.commit()) {
                    tracing::warn!(error = %e, "history write failed");
                }
            }
        }
    }

    /// Copies the payloads the tails keep by reference: all of them in a tail that is not
    /// hot (see [`PIN_MAX`]), those of a hot tail's segments past [`HOT_PIN_MAX`].
    fn hist_unshare(&mut self) {
        let now = Instant::now();
        // The oldest payload kept by reference after this, in a hot tail.
        let mut oldest: Option<Instant> = None;
        let mut kept = Vec::new();
        for conv in std::mem::take(&mut self.hist.pinned) {
            let Some(tail) = self.hist.tails.get_mut(&conv) else {
                continue; // (written, or the conversation deleted, since)
            };
            let before = tail.bytes;
            let mut keeps = None;
            for seg in tail.segs.iter_mut().filter(|s| !s.shared.is_empty()) {
                if let Some(t) = seg
                    .shared_since
                    .filter(|&t| tail.hot && now < t + HOT_PIN_MAX)
                {
                    keeps = Some(keeps.map_or(t, |k: Instant| k.min(t)));
                    continue;
                }
                let held = seg.held();
                seg.unshare();
                tail.bytes = tail.bytes.saturating_sub(held) + seg.held();
            }
            self.hist.tail_bytes = self.hist.tail_bytes.saturating_sub(before) + tail.bytes;
            if tail.hot {
                self.hist.hot_bytes = self.hist.hot_bytes.saturating_sub(before) + tail.bytes;
            }
            match keeps {
                Some(t) => {
                    oldest = Some(oldest.map_or(t, |o| o.min(t)));
                    kept.push(conv);
                }
                None => tail.pinned = false,
            }
        }
        self.hist.pinned = kept;
        // Looked at again when the oldest kept payload reaches HOT_PIN_MAX.
        self.hist.unshare_at = oldest.map(|t| t + HOT_PIN_MAX);
    }

    /// The tails are at the memory budget. A conversation that goes through its whole
    /// window (`per_conversation`) [`CHURN`] times within a flush interval drops most of what its
    /// tail holds before the next flush (whole segments past the window go in memory,
    /// never written): its tail stays (hot), while the hot tails fit in
    /// `opts.hot_bytes`; the others are written now. Without this, 16 pairs of 1 KiB
    /// messages wrote every message, 2 GB for 2M, to keep 160 MB of them (BENCHMARKS.md,
    /// sixteenth pass). A hot tail is written at the next flush (`flush_every`), like any.
    fn hist_relieve(&mut self) -> StoreResult<()> {
        // (Written in every round anyway under sync durability.)
        let hot_max = match self.hist.write_through {
            true => 0,
            false => self.hist.opts.hot_bytes,
        };
        let (keep, every) = (self.hist.opts.per_conversation, self.hist.opts.flush_every);
        let mut hot = 0usize;
        if hot_max > 0 {
            let convs = &self.hist.convs;
            for (conv, t) in self.hist.tails.iter_mut() {
                t.hot = t.hot || convs.get(conv).is_some_and(|st| st.churns(keep, every));
                if t.hot {
                    hot += t.bytes;
                }
            }
        }
        if hot == 0 || hot > hot_max {
            return self.hist_flush_sliced();
        }
        self.hist.hot_bytes = hot;
        self.hist_write_tails(Tails::Cold)
    }

    /// Writes every conversation's tail (one key per segment), the conversation entries
    /// and the read marks, then trims the conversations over their bounds.
    pub(crate) fn hist_flush(&mut self) -> StoreResult<()> {
        self.hist_write_tails(Tails::All)?;
        self.hist_write_noted(None);
        Ok(())
    }

    /// [`Worker::hist_flush`] for a flush that is due or the memory budget: the entries
    /// and marks a slice at a time, the rest at the next ticks.
    fn hist_flush_sliced(&mut self) -> StoreResult<()> {
        if self.hist.write_through {
            // (Sync durability: entries go with their messages' commit.)
            return self.hist_flush();
        }
        self.hist_write_tails(Tails::All)
    }

    /// [`Worker::hist_flush`] of the tails `which` names.
    fn hist_write_tails(&mut self, which: Tails) -> StoreResult<()> {
        let tails = match which {
            Tails::All => {
                self.hist.next_flush = None;
                self.hist.unshare_at = None;
                self.hist.pinned.clear();
                self.hist.tail_bytes = 0;
                self.hist.hot_bytes = 0;
                std::mem::take(&mut self.hist.tails)
            }
            Tails::Cold | Tails::Slice(_) => {
                let mut taken = 0;
                let some: NameMap<Vec<u8>, Tail> = self
                    .hist
                    .tails
                    .extract_if(|_, t| match which {
                        Tails::Slice(n) => {
                            taken += 1;
                            taken <= n
                        }
                        _ => !t.hot,
                    })
                    .collect();
                for t in some.values() {
                    let h = &mut self.hist;
                    h.tail_bytes = h.tail_bytes.saturating_sub(t.bytes);
                    if t.hot {
                        h.hot_bytes = h.hot_bytes.saturating_sub(t.bytes);
                    }
                }
                let tails = &self.hist.tails;
                self.hist.pinned.retain(|c| tails.contains_key(c));
                if self.hist.pinned.is_empty() {
                    self.hist.unshare_at = None;
                }
                // The tails left are written at the next flush at the latest (a partial
                // write may come first, with no flush due yet; a slice's flush is due).
                let every = self.hist.opts.flush_every;
                self.hist
                    .next_flush
                    .get_or_insert_with(|| Instant::now() + every);
                some
            }
        };
        // Entries and read marks of the conversations whose tails stay wait for them: a
        // crash must not leave a mark or a last seq ahead of the messages written. A
        // slice writes none: they all wait for the flush's last slice (finding a slice's
        // own would cost a pass over every entry per slice).
        let (held_pending, held_marks) = match which {
            Tails::All | Tails::Slice(_) => (Vec::new(), Vec::new()),
            Tails::Cold => {
                let tails = &self.hist.tails;
                let hot = |k: &Vec<u8>| entry_conv(k).is_some_and(|c| tails.contains_key(c));
                let held = |m: &mut NameMap<Vec<u8>, Noted>| {
                    m.extract_if(|k, _| hot(k)).collect::<Vec<_>>()
                };
                (held(&mut self.hist.pending), held(&mut self.hist.marks))
            }
        };
        let cutoff = self.age_cutoff();
        let limit = self.hist.opts.per_conversation;
        let mut trim = Vec::new();
        let wrote = !tails.is_empty();
        let mut writes: Vec<(Vec<u8>, Segment)> = Vec::new();
        for (conv, tail) in tails {
            let Some(st) = self.hist.convs.get_mut(&conv) else {
                continue; // (every tail has a state)
            };
            let keep_from = st.next_seq.saturating_sub(limit);
            for seg in tail.segs {
                if seg.end_seq() <= keep_from || seg.last_ts < cutoff {
                    continue;
                }
                st.since_trim += 1;
                st.bytes += seg.records_len() as u64;
                writes.push((chunk_key(&conv, seg.first_seq), seg));
            }
            let slack = (limit / 4).max(256);
            let max_bytes = self.hist.opts.max_bytes;
            let over = st.next_seq - st.oldest > limit.saturating_add(slack)
                || (max_bytes != 0 && st.bytes > max_bytes);
            let aged = self.hist.opts.max_age.is_some() && st.since_trim >= AGE_TRIM_EVERY;
            if over || aged {
                trim.push(conv);
            }
        }
        let written = self.hist_write_chunks(writes);
        if written.is_ok() && !matches!(which, Tails::Slice(_)) {
            // Written a slice now, the rest at the next ticks.
            self.hist_ready_noted();
            self.hist_write_noted(Some(NOTED_BUDGET));
        }
        self.hist.pending.extend(held_pending);
        self.hist.marks.extend(held_marks);
        written?;
        for conv in trim {
            self.hist_trim(&conv)?;
        }
        let compacted = self.hist_compact();
        // After the gauges (`hist_compact`): a reader that sees the write sees its bytes.
        if wrote {
            self.stats.history_writes.fetch_add(1, Ordering::Release);
            self.dbs.hlog.drop_behind();
        }
        compacted
    }

    /// Appends the segments' records to the history log and puts their chunk keys,
    /// pointing there.
    fn hist_write_chunks(&mut self, writes: Vec<(Vec<u8>, Segment)>) -> StoreResult<()> {
        let chunks = writes.iter().map(|(k, s)| {
            (
                &k[..],
                s.count,
                s.last_ts,
                s.record_pieces(),
                &s.ids,
                s.last_at,
            )
        });
        self.hist_put_chunks(chunks.collect())
    }

    /// Appends chunks (key, count, newest ts, records, msg_id ranges) to the history log
    /// and puts their keys, pointing there (new segments, and what compaction moves).
    fn hist_put_chunks(&mut self, chunks: Vec<PutChunk<'_>>) -> StoreResult<()> {
        if chunks.is_empty() {
            return Ok(());
        }
        let items: Vec<(&[u8], &[&[u8]])> = chunks.iter().map(|c| (c.0, &c.3[..])).collect();
        let locs = self.dbs.hlog.append_pieces(&items).map_err(log_err)?;
        for ((key, count, ts, _, ids, last_at), loc) in chunks.into_iter().zip(locs) {
            let value = log_chunk_value(count, ts, loc, ids, last_at);
            self.ops.push(Op::Put(Ks::History, key.to_vec(), value));
        }
        Ok(())
    }

    /// Compacts history log files while they hold more than twice the live bytes (see
    /// `store::histlog`): a file's entries that their keys still point to are appended
    /// again, the keys repointed, and the file deleted after the commit.
    fn hist_compact(&mut self) -> StoreResult<()> {
        for _ in 0..COMPACT_PER_FLUSH {
            let Some(id) = self.dbs.hlog.compaction_candidate() else {
                break;
            };
            // The pointers as committed (a trim's deletes included).
            self.commit()?;
            let buf = match self.dbs.hlog.read_file(id) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(log_err(e)),
            };
            let mut moves: Vec<Move<'_>> = Vec::new();
            for (key, offset, data) in histlog::entries(&buf) {
                let Some(v) = self.dbs.history.get(key)? else {
                    continue;
                };
                if let Some((count, ts, ChunkBody::Log(loc))) = parse_chunk(&v) {
                    if loc.file == id && loc.offset == offset && loc.len as usize == data.len() {
                        // (Ranges from the records: a value from before them has none.)
                        let ids = IdRanges::of_records(data);
                        moves.push((key.to_vec(), count, ts, loc, data, ids));
                    }
                }
            }
            let chunks = moves
                .iter()
                .map(|m| {
                    (
                        &m.0[..],
                        m.1,
                        m.2,
                        vec![m.4],
                        &m.5,
                        last_record_at(m.4) as u32,
                    )
                })
                .collect();
            self.hist_put_chunks(chunks)?;
            for m in &moves {
                self.dbs.hlog.release(m.3);
            }
            if self.dbs.hlog.live(id) > 0 {
                // Some of it could not be read (or was counted too high): kept, not
                // compacted again; trims release the rest.
                tracing::warn!(file = id, "history log file not emptied by compaction");
                self.dbs.hlog.mark_stuck(id);
            }
            self.commit()?;
            self.stats
                .history_compactions
                .fetch_add(1, Ordering::Relaxed);
        }
        self.hist_log_gauges();
        Ok(())
    }

    /// Publishes the history log's sizes (stats gauges).
    fn hist_log_gauges(&self) {
        let (size, live) = self.dbs.hlog.totals();
        self.stats.history_log_bytes.store(size, Ordering::Relaxed);
        self.stats
            .history_log_live_bytes
            .store(live, Ordering::Relaxed);
    }

    /// A stored chunk's records (`None`: in a history log file that is gone or short, as
    /// after an operating-system crash under `--durability memory`; skipped).
    fn chunk_records<'a>(
        &self,
        key: &[u8],
        body: ChunkBody<'a>,
    ) -> StoreResult<Option<Cow<'a, [u8]>>> {
        self.chunk_records_from(key, body, 0)
    }

    /// [`Worker::chunk_records`] from byte `from` of the records on (where one starts).
    fn chunk_records_from<'a>(
        &self,
        key: &[u8],
        body: ChunkBody<'a>,
        from: u32,
    ) -> StoreResult<Option<Cow<'a, [u8]>>> {
        self.stats
            .history_chunk_reads
            .fetch_add(1, Ordering::Relaxed);
        match body {
            ChunkBody::Inline(d) => Ok(d.get(from as usize..).map(Cow::Borrowed)),
            ChunkBody::Log(loc) => {
                match self.dbs.hlog.read_from(loc, key, from).map_err(log_err)? {
                    Some(d) => Ok(Some(Cow::Owned(d))),
                    None => {
                        tracing::warn!(
                            file = loc.file,
                            offset = loc.offset,
                            "history chunk missing"
                        );
                        Ok(None)
                    }
                }
            }
        }
    }

    /// Deletes the stored chunks of `conv` that no query may show any more (its tail
    /// is written).
    fn hist_trim(&mut self, conv: &[u8]) -> StoreResult<()> {
        self.commit()?;
        let mut st = self.conv_state(conv)?;
        let keep_from = st.next_seq.saturating_sub(self.hist.opts.per_conversation);
        let cutoff = self.age_cutoff();
        let prefix = chunk_prefix(conv);
        let mut oldest = st.next_seq;
        for g in self.dbs.history.range(chunk_key(conv, st.oldest)..) {
            let (k, v) = g.into_inner()?;
            let Some(seq) = chunk_seq(&prefix, &k) else {
                break;
            };
            let (count, last_ts, body) = parse_chunk(&v).ok_or_else(|| corrupt("chunk"))?;
            let max_bytes = self.hist.opts.max_bytes;
            let over_bytes = max_bytes != 0 && st.bytes > max_bytes;
            if seq + u64::from(count) <= keep_from || last_ts < cutoff || over_bytes {
                self.ops.push(Op::Del(Ks::History, k.to_vec()));
                let len = match body {
                    ChunkBody::Inline(d) => d.len() as u64,
                    ChunkBody::Log(loc) => {
                        self.dbs.hlog.release(loc);
                        u64::from(loc.len)
                    }
                };
                st.bytes = st.bytes.saturating_sub(len);
            } else {
                oldest = seq;
                break;
            }
        }
        st.oldest = oldest;
        st.since_trim = 0;
        self.hist.names.note_conv(conv);
        self.hist.convs.insert(conv.to_vec(), st);
        Ok(())
    }

    /// Visits the chunks of `conv` whose first seq is at most `upper`, newest first: the
    /// tail in memory, then the stored ones (older). `f` gets (first seq, count, newest
    /// ts, records) and returns false to stop.
    fn hist_chunks_rev(
        &self,
        conv: &[u8],
        upper: u64,
        mut f: impl FnMut(u64, u32, u64, &[u8]) -> bool,
    ) -> StoreResult<()> {
        if let Some(t) = self.hist.tails.get(conv) {
            for s in t.segs.iter().rev().filter(|s| s.first_seq <= upper) {
                if !f(s.first_seq, s.count, s.last_ts, &s.records()) {
                    return Ok(());
                }
            }
        }
        let prefix = chunk_prefix(conv);
        for g in self
            .dbs
            .history
            .range(prefix.clone()..=chunk_key(conv, upper))
            .rev()
        {
            let (k, v) = g.into_inner()?;
            let seq = chunk_seq(&prefix, &k).ok_or_else(|| corrupt("key"))?;
            let (count, last_ts, body) = parse_chunk(&v).ok_or_else(|| corrupt("chunk"))?;
            let Some(data) = self.chunk_records(&k, body)? else {
                continue;
            };
            if !f(seq, count, last_ts, &data) {
                break;
            }
        }
        Ok(())
    }

    /// The seq of the visible message `msg_id` (seq ≥ `from`, not older than `cutoff`)
    /// of a conversation, if it is kept: newest first, reading the records only of the
    /// segments and chunks whose msg_id ranges hold it (each stored chunk's pointer is
    /// read; chunks written before the ranges were kept are read whole). Bounded
    /// (`HistoryOptions::lookup_bounds`): the ids are the clients', and ids that make
    /// every chunk's ranges hold any id would make a lookup of one that is not there read
    /// the whole conversation (64 MiB) for a 20-byte request.
    fn hist_find_seq(
        &self,
        conv: &[u8],
        msg_id: u64,
        from: u64,
        cutoff: u64,
    ) -> StoreResult<Found> {
        let (max_reads, max_looks) = self.hist.opts.lookup_bounds();
        let mut budget = LookupBudget {
            reads: max_reads,
            looks: max_looks,
            looked: 0,
        };
        let found = self.hist_find_in(conv, msg_id, from, cutoff, &mut budget);
        self.stats
            .history_lookup_pointers
            .fetch_add(budget.looked, Ordering::Relaxed);
        if let Ok(Found::Beyond) = found {
            self.stats
                .history_lookups_cut
                .fetch_add(1, Ordering::Relaxed);
        }
        found
    }

    /// [`Worker::hist_find_seq`] within `budget`.
    fn hist_find_in(
        &self,
        conv: &[u8],
        msg_id: u64,
        from: u64,
        cutoff: u64,
        budget: &mut LookupBudget,
    ) -> StoreResult<Found> {
        fn found<'a>(
            (msg_id, from, cutoff): (u64, u64, u64),
            first: u64,
            recs: impl Iterator<Item = RawRecord<'a>>,
        ) -> Option<Found> {
            let mut seq = None;
            for (i, r) in recs.enumerate() {
                if r.1 == msg_id {
                    seq = Some((first + i as u64, r.2));
                }
            }
            seq.map(|(s, ts)| match s >= from && ts >= cutoff {
                true => Found::Seq(s),
                false => Found::Absent,
            })
        }
        let what = (msg_id, from, cutoff);
        let tail = self.hist.tails.get(conv);
        for s in tail.iter().flat_map(|t| t.segs.iter().rev()) {
            if s.end_seq() <= from {
                return Ok(Found::Absent);
            }
            if !budget.look() {
                return Ok(Found::Beyond);
            }
            if s.ids.may_hold(msg_id) {
                if !budget.read() {
                    return Ok(Found::Beyond);
                }
                if let Some(r) = found(what, s.first_seq, s.iter_records()) {
                    return Ok(r);
                }
            }
        }
        let prefix = chunk_prefix(conv);
        for g in self.dbs.history.prefix(&prefix).rev() {
            if !budget.look() {
                return Ok(Found::Beyond);
            }
            let (k, v) = g.into_inner()?;
            let seq = chunk_seq(&prefix, &k).ok_or_else(|| corrupt("key"))?;
            let (count, _, body) = parse_chunk(&v).ok_or_else(|| corrupt("chunk"))?;
            if seq + u64::from(count) <= from {
                break;
            }
            if chunk_ids(&v).is_some_and(|ids| !ids.may_hold(msg_id)) {
                continue;
            }
            if !budget.read() {
                return Ok(Found::Beyond);
            }
            let Some(data) = self.chunk_records(&k, body)? else {
                continue;
            };
            if let Some(r) = found(what, seq, records(&data)) {
                return Ok(r);
            }
        }
        Ok(Found::Absent)
    }

    /// The conversation `user` asks about (`None`: a room it is not a member of).
    fn asked_conv(
        &self,
        user: &str,
        peer: Option<&str>,
        room: Option<&str>,
    ) -> StoreResult<Option<Vec<u8>>> {
        match (peer, room) {
            (Some(p), None) => Ok(Some(dm_conv(user.as_bytes(), p.as_bytes()))),
            (None, Some(r)) => {
                if !self.dbs.rooms.contains_key(member_key(user, r))? {
                    return Ok(None);
                }
                Ok(Some(room_conv(r.as_bytes())))
            }
            _ => Err(StoreError::Invalid("set user or room, not both".into())),
        }
    }

    /// A page of a conversation, oldest first.
    pub(crate) fn hist_query(&mut self, q: &HistQuery) -> StoreResult<HistPage> {
        self.commit()?;
        let Some(conv) = self.asked_conv(&q.user, q.peer.as_deref(), q.room.as_deref())? else {
            return Ok(HistPage::Forbidden);
        };
        let st = self.conv_state(&conv)?;
        let from = self.visible_from(&st);
        let cutoff = self.age_cutoff();
        let mut out = Vec::new();
        // The seq of `before`: from the pages answered recently, else looked for in the
        // chunks whose msg_id ranges hold it. The page starts just before it.
        let start = match q.before {
            0 => None,
            b => match self.hist.cursor(&conv, b) {
                Some(s) => Some(s),
                None => match self.hist_find_seq(&conv, b, from, cutoff)? {
                    Found::Seq(s) => Some(s),
                    Found::Absent => return Ok(HistPage::BeforeNotFound),
                    Found::Beyond => return Ok(HistPage::BeforeBeyondLookup),
                },
            },
        };
        let mut oldest_seq = 0;
        let mut bytes = 0usize;
        self.hist_chunks_rev(
            &conv,
            start.unwrap_or(u64::MAX),
            |seq, count, last_ts, data| {
                if out.len() >= q.limit || seq + u64::from(count) <= from || last_ts < cutoff {
                    return false;
                }
                // Sized by the header (bounded by what the bytes can hold): no regrowth.
                let mut recs = Vec::with_capacity((count as usize).min(data.len() / RECORD_FIXED));
                recs.extend(records(data));
                for (i, r) in recs.iter().enumerate().rev() {
                    let s = seq + i as u64;
                    if start.is_some_and(|start| s >= start) {
                        continue;
                    }
                    if s < from || r.2 < cutoff {
                        return false;
                    }
                    bytes += r.0.len() + r.3.len() + PAGE_MSG_OVERHEAD;
                    if bytes > q.max_bytes && !out.is_empty() {
                        return false;
                    }
                    oldest_seq = s;
                    out.push(to_msg(*r));
                    if out.len() >= q.limit {
                        return false;
                    }
                }
                true
            },
        )?;
        if let Some(m) = out.last() {
            self.hist.note_cursor(conv, m.msg_id, oldest_seq);
        }
        out.reverse();
        Ok(HistPage::Messages(out))
    }

    /// Records that `user` read the conversation up to `msg_id` (MarkRead): nothing if
    /// the message is not in the history kept, or the room not the user's.
    pub(crate) fn hist_mark(
        &mut self,
        user: &str,
        peer: Option<&str>,
        room: Option<&str>,
        msg_id: u64,
    ) -> StoreResult<()> {
        if self.hist.opts.per_conversation == 0 {
            return Ok(());
        }
        let Some(conv) = self.asked_conv(user, peer, room)? else {
            return Ok(());
        };
        // No mark of a user being deleted, nor in a conversation with one: those are
        // being deleted (`worker::deletion`).
        if self.deleting(user) || peer.is_some_and(|p| self.deleting(p)) {
            return Ok(());
        }
        let st = self.conv_state(&conv)?;
        let from = self.visible_from(&st);
        // (Not kept, or further back than a lookup looks: nothing either way.)
        let Found::Seq(seq) = self.hist_find_seq(&conv, msg_id, from, 0)? else {
            return Ok(());
        };
        let h = &mut self.hist;
        let e = h
            .marks
            .entry(mark_key(user.as_bytes(), &conv))
            .or_insert_with(|| {
                h.names.note(user.as_bytes());
                h.names.note_conv(&conv);
                Noted::default()
            });
        e.note(seq);
        if self.hist.write_through {
            // (Its messages are written with their round.)
            self.hist_ready_noted();
            self.hist_write_noted(None);
        } else if self.hist.next_flush.is_none() {
            self.hist.next_flush = Some(Instant::now() + self.hist.opts.flush_every);
        }
        Ok(())
    }

    /// The newest message of a conversation, if one is visible: the last of its tail in
    /// memory, else of its newest stored chunk.
    fn hist_last(&mut self, conv: &[u8]) -> StoreResult<Option<(HistMsg, ConvState)>> {
        let st = self.conv_state(conv)?;
        if st.next_seq <= self.visible_from(&st) {
            return Ok(None);
        }
        let cutoff = self.age_cutoff();
        if let Some(seg) = self.hist.tails.get(conv).and_then(|t| t.segs.back()) {
            if let Some(r) = seg.iter_records().last() {
                return Ok((r.2 >= cutoff).then(|| (to_msg(r), st)));
            }
        }
        let prefix = chunk_prefix(conv);
        let Some(g) = self.dbs.history.prefix(&prefix).next_back() else {
            return Ok(None);
        };
        let (k, v) = g.into_inner()?;
        let (_, last_ts, body) = parse_chunk(&v).ok_or_else(|| corrupt("chunk"))?;
        if last_ts < cutoff {
            return Ok(None);
        }
        // Its last record only, where the value says it starts (a chunk is up to 64 KiB:
        // a list of 500 conversations read 30 MB to answer 50 KB).
        let from = chunk_last_at(&v).unwrap_or(0);
        let Some(data) = self.chunk_records_from(&k, body, from)? else {
            return Ok(None);
        };
        Ok(records(&data).last().map(|r| (to_msg(r), st)))
    }

    /// `user`'s conversations, newest last message first: at most `limit`, their last
    /// messages within `max_bytes` (at least one). They are sorted by their newest
    /// timestamp as their cached states hold it (a conversation's newest chunk's header,
    /// read once): no chunk is read but the `limit` answered ones' newest, so a user with
    /// thousands of conversations of large messages costs a look at each one's state,
    /// not a read of each one's newest chunk.
    pub(crate) fn hist_conversations(
        &mut self,
        user: &str,
        limit: usize,
        before_ts: u64,
        max_bytes: usize,
    ) -> StoreResult<Vec<ConvSummary>> {
        // The user's conversation entries and read marks noted since the last flush
        // (small keys); the tails stay in memory (their last messages are read there): a
        // client listing in a loop does not make every conversation's segments written
        // small. (Only the user's: all of them were 1.3 million reads after a storm.)
        self.hist_write_noted_of(user.as_bytes());
        self.commit()?;
        // conversation id → last sent seq.
        let mut convs: Vec<(Vec<u8>, u64)> = Vec::new();
        let prefix = user_prefix(user.as_bytes());
        for g in self.dbs.history.prefix(&prefix).take(CONV_SCAN_MAX) {
            let (k, v) = g.into_inner()?;
            convs.push((k[prefix.len()..].to_vec(), decode_u64(&v)));
        }
        let rooms = self.rooms_of(user)?;
        let member: HashSet<&[u8]> = rooms.iter().map(|r| r.as_bytes()).collect();
        let listed: HashSet<Vec<u8>> = convs.iter().map(|(c, _)| c.clone()).collect();
        for room in rooms.iter().take(CONV_SCAN_MAX) {
            let conv = room_conv(room.as_bytes());
            if !listed.contains(&conv) {
                convs.push((conv, 0));
            }
        }
        let cutoff = self.age_cutoff();
        // (newest ts, conversation, last sent seq) of those with a visible message.
        let mut newest: Vec<(u64, Vec<u8>, u64)> = Vec::with_capacity(convs.len());
        for (conv, sent) in convs {
            match parse_conv(&conv) {
                Some(ConvName::Direct(..)) => {}
                // Left the room: its history is no longer the user's.
                Some(ConvName::Room(r)) if member.contains(r) => {}
                _ => continue,
            }
            let st = self.conv_state(&conv)?;
            if st.next_seq <= self.visible_from(&st) || st.last_ts < cutoff {
                continue;
            }
            if before_ts != 0 && st.last_ts >= before_ts {
                continue;
            }
            newest.push((st.last_ts, conv, sent));
        }
        newest.sort_by_key(|(ts, _, _)| std::cmp::Reverse(*ts));
        newest.truncate(limit);
        let mut page = Vec::with_capacity(newest.len());
        let mut bytes = 0usize;
        for (ts, conv, sent) in newest {
            let (peer, room) = match parse_conv(&conv) {
                Some(ConvName::Direct(a, b)) => {
                    let peer = if a == user.as_bytes() { b } else { a };
                    (Some(String::from_utf8_lossy(peer).into_owned()), None)
                }
                Some(ConvName::Room(r)) => (None, Some(String::from_utf8_lossy(r).into_owned())),
                None => continue,
            };
            let Some((mut last, st)) = self.hist_last(&conv)? else {
                continue;
            };
            // The timestamp it was sorted by (the newest; the last message's but when two
            // shards' messages reached the storage thread out of their clocks' order):
            // the next page's `before_ts` is compared with it.
            last.ts_us = ts;
            // Read up to the read mark; without one, up to the user's last own message.
            let mark = self.dbs.history.get(mark_key(user.as_bytes(), &conv))?;
            let read = mark.map_or(sent, |v| decode_u64(&v));
            let seen = read.max(self.visible_from(&st) - 1);
            let unread = (st.next_seq - 1).saturating_sub(seen);
            bytes += last.payload.len()
                + last.from_user.len()
                + peer.as_ref().or(room.as_ref()).map_or(0, String::len)
                + PAGE_MSG_OVERHEAD;
            if bytes > max_bytes && !page.is_empty() {
                break;
            }
            page.push(ConvSummary {
                peer,
                room,
                last,
                unread,
            });
        }
        Ok(page)
    }

    /// What memory holds of `user`'s history, at the start of its deletion: the tails
    /// of its direct conversations (never written now: they are being deleted), and the
    /// entries and read marks waiting for a flush that are its own or in those
    /// conversations; the cached states of those conversations (one started again after
    /// the deletion starts from seq 1, and checks its accounts again). Answers the direct
    /// conversations named by the entries it dropped: a slice of a flush may have written
    /// their chunks before their entries, so the deletion's scan of the user's entries
    /// would not find them ([`HistCursor::extra`]). O(conversations cached), instead of
    /// a write of every tail.
    pub(super) fn hist_forget_user(&mut self, user: &str) -> Vec<Vec<u8>> {
        self.hist_forget_users(&[user.to_owned()])
            .pop()
            .unwrap_or_default()
    }

    /// [`Worker::hist_forget_user`] for several users in one walk of what memory holds
    /// (the idle-user sweep's; a walk took 70-90 ms with 100 000 conversations cached),
    /// none if [`NamesSeen`] says it names none of them. Answers each user's
    /// conversations, in `users`' order.
    pub(super) fn hist_forget_users(&mut self, users: &[String]) -> Vec<Vec<Vec<u8>>> {
        let mut extra: Vec<Vec<Vec<u8>>> = vec![Vec::new(); users.len()];
        let names: Vec<&[u8]> = users.iter().map(|u| u.as_bytes()).collect();
        self.hist_forget_cursors(&names);
        if !names.iter().any(|u| self.hist.names.may_name(u)) {
            // Nothing in memory names them (checked by a walk in debug tests).
            #[cfg(all(test, debug_assertions))]
            self.hist_assert_unnamed(users);
            return extra;
        }
        let index: HashMap<&[u8], usize> = users
            .iter()
            .enumerate()
            .map(|(i, u)| (u.as_bytes(), i))
            .collect();
        let direct = |conv: &[u8]| match parse_conv(conv) {
            Some(ConvName::Direct(a, b)) => Some((index.get(a).copied(), index.get(b).copied())),
            _ => None,
        };
        let with_user = |conv: &[u8]| direct(conv).is_some_and(|(a, b)| a.is_some() || b.is_some());
        // What stays is noted again: the names are exact after the walk.
        let mut names = NamesSeen::default();
        let h = &mut self.hist;
        let gone = h.tails.extract_if(|conv, _| {
            with_user(conv) || {
                names.note_conv(conv);
                false
            }
        });
        for (_, tail) in gone {
            h.tail_bytes = h.tail_bytes.saturating_sub(tail.bytes);
            if tail.hot {
                h.hot_bytes = h.hot_bytes.saturating_sub(tail.bytes);
            }
        }
        let tails = &h.tails;
        h.pinned.retain(|c| tails.contains_key(c));
        if h.pinned.is_empty() {
            h.unshare_at = None;
        }
        let mut seen: HashSet<Vec<u8>> = HashSet::new();
        let ours = |k: &Vec<u8>| {
            entry_user(k).is_some_and(|u| index.contains_key(u))
                || entry_conv(k).is_some_and(&with_user)
        };
        let gone = h.pending.extract_if(|k, _| {
            ours(k) || {
                names.note_key(k);
                false
            }
        });
        for (k, _) in gone {
            let Some(conv) = entry_conv(&k) else {
                continue;
            };
            if let Some((a, b)) = direct(conv) {
                if (a.is_some() || b.is_some()) && seen.insert(conv.to_vec()) {
                    // (A conversation of a user with itself is its once.)
                    let b = b.filter(|_| a != b);
                    for i in [a, b].into_iter().flatten() {
                        extra[i].push(conv.to_vec());
                    }
                }
            }
        }
        h.marks.retain(|k, _| {
            !ours(k) && {
                names.note_key(k);
                true
            }
        });
        h.convs.retain(|conv, _| {
            !with_user(conv) && {
                names.note_conv(conv);
                true
            }
        });
        h.names = names;
        extra
    }

    /// Nothing the history cache holds names any of `users` (what
    /// [`Worker::hist_forget_users`] relies on when [`NamesSeen`] says so).
    #[cfg(all(test, debug_assertions))]
    fn hist_assert_unnamed(&self, users: &[String]) {
        let h = &self.hist;
        let users: Vec<&[u8]> = users.iter().map(|u| u.as_bytes()).collect();
        let named = |conv: &[u8]| direct_with_any(conv, &users);
        let key = |k: &Vec<u8>| {
            entry_user(k).is_some_and(|e| users.contains(&e)) || entry_conv(k).is_some_and(named)
        };
        assert!(
            !h.tails.keys().any(|c| named(c))
                && !h.convs.keys().any(|c| named(c))
                && !h.pending.keys().any(key)
                && !h.marks.keys().any(key),
            "the history cache names one of {users:?}, not noted"
        );
    }

    /// Seqs of deleted conversations start again at 1: the `before` cursors of the
    /// direct conversations of `users` go (those of other conversations stay: the
    /// idle-user sweep deletes users all the time).
    pub(super) fn hist_forget_cursors(&mut self, users: &[&[u8]]) {
        let named = |(conv, _): &(Vec<u8>, u64)| direct_with_any(conv, users);
        self.hist.cursors.retain(|k, _| !named(k));
        self.hist.cursors_old.retain(|k, _| !named(k));
    }

    /// Removes `user`'s direct conversations (both sides' entries and read marks and
    /// their messages) and its own conversation entries and read marks, a slice at a
    /// time (`worker::deletion`): goes on from `cur` and deletes within `budget` (each
    /// conversation's chunks, then its entries, so that what is left is found again by
    /// the same scans after a restart); true once all is
    /// deleted. Call with every write committed and with no tail of the user's direct
    /// conversations in memory (none is made while the user is being deleted:
    /// `hist_append`).
    pub(super) fn hist_delete_user_slice(
        &mut self,
        user: &str,
        cur: &mut HistCursor,
        budget: &mut Budget,
    ) -> StoreResult<bool> {
        let u = user.as_bytes();
        let prefix = user_prefix(u);
        while let Some(conv) = cur.extra.front().cloned() {
            if budget.spent() {
                return Ok(false);
            }
            if let Some(ConvName::Direct(a, b)) = parse_conv(&conv) {
                let peer = if a == u { b } else { a };
                if !self.hist_delete_chunks(&conv, &mut cur.chunk, budget)? {
                    return Ok(false);
                }
                // (Entries written before may be on disk.)
                self.ops.push(Op::Del(Ks::History, user_key(peer, &conv)));
                self.ops.push(Op::Del(Ks::History, mark_key(peer, &conv)));
                self.hist.convs.remove(&conv);
                budget.take(2);
            }
            cur.extra.pop_front();
            cur.extra_done.insert(conv);
        }
        while !cur.entries_done {
            if cur.entries.is_empty() {
                // The next entries, read before the conversations' scans (none is
                // written meanwhile: `note_entry`).
                for g in self.dbs.history.range(under(&prefix, cur.entry.as_deref())) {
                    let k = g.key()?;
                    if !k.starts_with(&prefix) || cur.entries.len() == ENTRIES_PER_READ {
                        break;
                    }
                    cur.entries.push_back(k.to_vec());
                }
                if cur.entries.is_empty() {
                    cur.entries_done = true;
                    break;
                }
            }
            while let Some(k) = cur.entries.front().cloned() {
                if budget.spent() {
                    return Ok(false);
                }
                let conv = &k[prefix.len()..];
                let direct = match parse_conv(conv) {
                    Some(ConvName::Direct(a, b)) if !cur.extra_done.contains(conv) => {
                        Some(if a == u { b } else { a })
                    }
                    _ => None,
                };
                if let Some(peer) = direct {
                    if !self.hist_delete_chunks(conv, &mut cur.chunk, budget)? {
                        return Ok(false);
                    }
                    self.ops.push(Op::Del(Ks::History, user_key(peer, conv)));
                    self.ops.push(Op::Del(Ks::History, mark_key(peer, conv)));
                    self.hist.convs.remove(conv);
                    budget.take(2);
                }
                self.ops.push(Op::Del(Ks::History, k.clone()));
                budget.take(1);
                cur.entries.pop_front();
                cur.entry = Some(k);
            }
        }
        // Its own read marks.
        let prefix = mark_prefix(u);
        for g in self.dbs.history.range(under(&prefix, cur.mark.as_deref())) {
            let k = g.key()?;
            if !k.starts_with(&prefix) {
                break;
            }
            if budget.spent() {
                return Ok(false);
            }
            self.ops.push(Op::Del(Ks::History, k.to_vec()));
            budget.take(1);
            cur.mark = Some(k.to_vec());
        }
        Ok(true)
    }

    /// Deletes the stored chunks of `conv` after `after` (their log records released)
    /// within `budget`: true once none is left (`after` then emptied for the next).
    fn hist_delete_chunks(
        &mut self,
        conv: &[u8],
        after: &mut Option<Vec<u8>>,
        budget: &mut Budget,
    ) -> StoreResult<bool> {
        let prefix = chunk_prefix(conv);
        for g in self.dbs.history.range(under(&prefix, after.as_deref())) {
            let (k, v) = g.into_inner()?;
            if !k.starts_with(&prefix) {
                break;
            }
            if budget.spent() {
                return Ok(false);
            }
            if let Some((_, _, ChunkBody::Log(loc))) = parse_chunk(&v) {
                self.dbs.hlog.release(loc);
            }
            self.ops.push(Op::Del(Ks::History, k.to_vec()));
            budget.take(1);
            *after = Some(k.to_vec());
        }
        *after = None;
        Ok(true)
    }

    /// Removes the conversation of room `name`: its tail in memory, its stored chunks
    /// (their history log records released, so the log's live bytes drop and its files
    /// get compacted or deleted), the conversation entries and read marks of `people`
    /// and of every sender found in its messages, and what is cached of it (state,
    /// `before` cursors, entries and marks not yet written). Called when the room is
    /// deleted, and when a room is made with a name whose conversation is still there
    /// (left by a version that did not remove it): a room starts with no history. Call
    /// with every write committed.
    pub(crate) fn hist_delete_room(&mut self, name: &[u8], people: &[&str]) -> StoreResult<()> {
        let conv = room_conv(name);
        let room = String::from_utf8_lossy(name);
        // Whose entries may exist: those asked, and every sender (an entry is written
        // for the sender of a message; the HTTP API may publish as any name).
        let mut users: std::collections::BTreeSet<Vec<u8>> =
            people.iter().map(|p| p.as_bytes().to_vec()).collect();
        let mut had = false;
        if let Some(tail) = self.hist.tails.remove(&conv) {
            had = true;
            self.hist.tail_bytes = self.hist.tail_bytes.saturating_sub(tail.bytes);
            if tail.hot {
                self.hist.hot_bytes = self.hist.hot_bytes.saturating_sub(tail.bytes);
            }
            for seg in &tail.segs {
                users.extend(seg.iter_records().map(|r| r.0.to_vec()));
            }
        }
        // Entries and marks not yet written are noted only for a conversation with a
        // state (the cache of states is emptied only while none are pending): the maps
        // are looked through only then, not at every room made.
        if self.hist.convs.remove(&conv).is_some() {
            had = true;
            let of_conv = |k: &Vec<u8>| entry_conv(k) == Some(&conv[..]);
            self.hist.pending.retain(|k, _| !of_conv(k));
            self.hist.marks.retain(|k, _| !of_conv(k));
        }
        let mut chunks = Vec::new();
        for g in self.dbs.history.prefix(chunk_prefix(&conv)) {
            let (k, v) = g.into_inner()?;
            chunks.push((k.to_vec(), v));
        }
        // Cursors outlive the states (at most `CURSORS_MAX` to look through), not the
        // messages: a room made with a new name skips them.
        if had || !chunks.is_empty() {
            self.hist.cursors.retain(|(c, _), _| *c != conv);
            self.hist.cursors_old.retain(|(c, _), _| *c != conv);
        }
        for (k, v) in chunks {
            match parse_chunk(&v) {
                Some((_, _, body)) => {
                    // Read for its senders only: a chunk whose records are lost or
                    // unreadable names no one, and is deleted all the same (a room whose
                    // log cannot be read can still be deleted).
                    match self.chunk_records(&k, body) {
                        Ok(Some(data)) => users.extend(records(&data).map(|r| r.0.to_vec())),
                        Ok(None) => {}
                        Err(e) => tracing::warn!(error = %e, "room {room:?}: chunk unread"),
                    }
                    if let ChunkBody::Log(loc) = body {
                        self.dbs.hlog.release(loc);
                    }
                }
                None => tracing::warn!("deleting a corrupt history chunk of room {room:?}"),
            }
            self.ops.push(Op::Del(Ks::History, k));
        }
        for u in users {
            // Only the keys there (no tombstone for every member of every new room).
            for k in [user_key(&u, &conv), mark_key(&u, &conv)] {
                if self.dbs.history.contains_key(&k)? {
                    self.ops.push(Op::Del(Ks::History, k));
                }
            }
        }
        self.hist_log_gauges();
        Ok(())
    }

    /// Removes the conversations of rooms that no longer exist: versions before
    /// [`Worker::hist_delete_room`] left a deleted room's history behind (readable by
    /// whoever made a room with its name, and never freed). Once per store (marked by
    /// the `R` key), when it opens, before its thread starts: one seek per room
    /// conversation, and the records of the orphaned ones read for their senders.
    pub(crate) fn hist_sweep_deleted_rooms(&mut self) -> StoreResult<()> {
        if self.dbs.history.contains_key([ROOMS_SWEPT_TAG])? {
            return Ok(());
        }
        let start = [CHUNK_TAG, b'r'];
        let mut from = start.to_vec();
        let mut swept = 0u64;
        loop {
            let Some(g) = self.dbs.history.range(from.clone()..).next() else {
                break;
            };
            let k = g.key()?;
            if !k.starts_with(&start) {
                break;
            }
            // `c` + conversation id + seq (8 bytes).
            let conv = k.get(1..k.len().saturating_sub(8)).unwrap_or_default();
            let Some(ConvName::Room(name)) = parse_conv(conv) else {
                // Not a chunk key of a room: past it.
                from = k.to_vec();
                from.push(0);
                continue;
            };
            let name = name.to_vec();
            from = chunk_key(conv, u64::MAX);
            from.push(0);
            if !self.dbs.rooms.contains_key(room_key(&name))? {
                self.hist_delete_room(&name, &[])?;
                self.commit()?;
                swept += 1;
            }
        }
        // (Not a counted commit: a new store opens with none. Lost in a crash, the
        // sweep runs again, finding nothing.)
        self.dbs.history.insert([ROOMS_SWEPT_TAG], [])?;
        if swept > 0 {
            tracing::info!(rooms = swept, "removed the history of deleted rooms");
            self.hist_log_gauges();
        }
        Ok(())
    }

    /// Empties the conversation cache past [`CACHE_MAX`] (every write committed, the
    /// tails written).
    pub(crate) fn hist_trim_cache(&mut self) {
        let h = &mut self.hist;
        if h.convs.len() <= h.trim_at || !h.tails.is_empty() {
            return;
        }
        if h.pending.is_empty() && h.marks.is_empty() {
            h.convs = NameMap::default();
            // (Nothing in memory names anyone now.)
            h.names = NamesSeen::default();
            h.trim_at = CACHE_MAX;
            return;
        }
        // The states of conversations with entries or marks still to write stay (a
        // conversation's deletion looks for those only where it has a state), and so do
        // the names those name: under a storm of new conversations some always wait
        // (written a slice at a time), and the cache grew past its bound (1.9 million
        // states).
        let mut names = NamesSeen::default();
        let mut kept = NameMap::default();
        for k in h.pending.keys().chain(h.marks.keys()) {
            names.note_key(k);
            let Some(conv) = entry_conv(k) else {
                continue;
            };
            if let Some((c, st)) = h.convs.remove_entry(conv) {
                names.note_conv(&c);
                kept.insert(c, st);
            }
        }
        // Walked again only once the cache has doubled: each walk is of every entry and
        // mark waiting (it ran at every round while over 100 000 of them waited: 1.5 s).
        h.trim_at = CACHE_MAX.max(2 * kept.len());
        h.convs = kept;
        h.names = names;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_conversation_churns_when_it_goes_through_its_window_twice_per_interval() {
        let sec = std::time::Duration::from_secs(1);
        let t0 = 1_000_000_000;
        let st = |count: u64, span_us: u64| ConvState {
            next_seq: 1,
            oldest: 1,
            since_trim: 0,
            indexed: true,
            last_ts: t0 + span_us,
            bytes: 0,
            rate_from_ts: t0,
            rate_count: count,
        };
        // Keeping 100 per conversation, flushed every second: 200 a second or more.
        assert!(st(100, 500_000).churns(100, sec), "200/s");
        assert!(!st(100, 1_000_000).churns(100, sec), "100/s");
        assert!(st(2_000, 10_000_000).churns(100, sec));
        assert!(!st(2_000, 11_000_000).churns(100, sec));
        // The same rate against a longer interval churns.
        assert!(st(2_000, 11_000_000).churns(100, sec * 100));
        // Too few, or over too short a time, to tell (a tenth of the interval, at most
        // 100 ms).
        assert!(!st(63, 100_000).churns(100, sec));
        assert!(st(64, 100_000).churns(100, sec));
        assert!(!st(1_000, 99_999).churns(100, sec), "under 100 ms");
        assert!(st(1_000, 10_000).churns(100, sec / 10), "a tenth of 100 ms");
        // The rate's start is renewed past two intervals.
        let mut s = st(0, 0);
        s.note_rate(10, t0, sec);
        s.last_ts = t0 + 2_500_000;
        s.note_rate(5, t0 + 2_400_000, sec);
        assert_eq!((s.rate_from_ts, s.rate_count), (t0 + 2_400_000, 5));
        s.note_rate(5, t0 + 2_450_000, sec);
        assert_eq!((s.rate_from_ts, s.rate_count), (t0 + 2_400_000, 10));
    }

    #[test]
    fn the_cursors_of_the_last_half_of_the_bound_are_always_kept() {
        let mut h = HistState::new(HistoryOptions::default(), Durability::Memory);
        let half = CURSORS_MAX as u64 / 2;
        for id in 1..=3 * half + 7 {
            h.note_cursor(b"c".to_vec(), id, id * 10);
            // Every one of the last `half` noted is still there.
            let oldest_kept = id.saturating_sub(half - 1).max(1);
            for probe in [oldest_kept, (oldest_kept + id) / 2, id] {
                assert_eq!(h.cursor(b"c", probe), Some(probe * 10), "{id} {probe}");
            }
        }
        // Bounded: the two generations hold at most CURSORS_MAX; the oldest are gone.
        assert!(h.cursors.len() + h.cursors_old.len() <= CURSORS_MAX);
        assert_eq!(h.cursor(b"c", 1), None);
        assert_eq!(h.cursor(b"d", 3 * half), None);
    }

    #[test]
    fn a_lookup_budget_counts_looks_and_reads_apart() {
        let mut b = LookupBudget {
            reads: 2,
            looks: 3,
            looked: 0,
        };
        assert!(b.look() && b.read() && b.look() && b.read());
        assert!(!b.read(), "a third read");
        assert!(b.look());
        assert!(!b.look(), "a fourth look");
        assert_eq!(b.looked, 3);
        let opts = HistoryOptions {
            per_conversation: 10_000,
            ..HistoryOptions::default()
        };
        assert_eq!(
            opts.lookup_bounds(),
            (crate::store::LOOKUP_CHUNKS_DEFAULT, 10_000)
        );
    }
}
