//! Conversation history: what the shards hand the storage thread, what queries answer,
//! and the byte layout of the `history` keyspace.
//!
//! # Layout (keyspace `history`, every integer big-endian)
//! - A conversation id ([`dm_conv`], [`room_conv`]): `d` + the two user names in byte
//!   order (each a length byte and the name; one id for both directions), or `r` + the
//!   room name (length byte and name). Length-prefixed, so no id is a prefix of another.
//! - A chunk of messages: `c` + conversation id + the seq of its first message (u64).
//!   Value: count (u32), newest `server_ts_us` (u64), then where the records are: the
//!   count's top bit set, a pointer into the history log (`store::histlog`: file u32,
//!   offset u64, length u32) that holds them; clear (chunks written before the log),
//!   the records themselves ([`push_record`]).
//!   A chunk is one [`Segment`] the storage thread filled in memory: at most
//!   `SEGMENT_MAX_MSGS` messages or about `SEGMENT_MAX_BYTES` (`worker/history.rs`), so a
//!   page is one reverse range scan over a few keys and decodes at most a chunk or two
//!   beyond what it returns.
//! - A user's conversation entry: `u` + length byte + user + conversation id → the seq of
//!   the last message the user sent in it (u64, 0: none): the conversation list.
//! - A history log file's live bytes: `f` + file id (u32) → bytes of chunk records in
//!   it that a chunk still points to (u64; `store::histlog`).
//! - The next history log file id: `F` → u32.
//! - `R` → empty: the history left behind by rooms deleted before a room's deletion
//!   removed its conversation was cleaned (once, when the store opened).
//! - A user's read mark: `m` + length byte + user + conversation id → the seq of the
//!   message the user last marked read (MarkRead) in it (u64): the unread count is the
//!   messages after it (after the user's last own message when there is no mark).
//!
//! # Write path
//! Shards hand the storage thread one request per loop turn: per conversation, the
//! messages as records ([`HistChunk`], encoded on the shard). The storage thread copies
//! them into the conversation's in-memory tail of segments (a payload the shard shared
//! is kept by reference, and written from where it is). Under
//! `--durability memory` the tails are written (one key per segment) once per
//! `--history-flush-every`, as soon as they hold `--history-memory-bytes`, before a
//! conversation list or an account deletion, and at shutdown: fjall sees a few large
//! writes per second instead of one per message per turn, and a router crash loses at
//! most that interval of history. Queries read the tail and the stored chunks. Under
//! `--durability sync` the tails are written in the round that appended them, so a
//! message's history is in the same group commit as the message.
//!
//! Seqs are per conversation, from 1, assigned by the storage thread in arrival order.
//! Retention: a query sees only the last `history_per_conversation` seqs (and, with
//! `history_max_age`, nothing older). In memory, whole segments past the bound are
//! dropped before they are ever written; stored chunks past either bound are deleted
//! lazily, when a conversation is over its bound by a slack (a quarter of the bound, at
//! least 256 messages) or every 64 chunks with a max age, so trimming costs no work per
//! message.
//!
//! Deleting a room removes its conversation in the batch that deletes the room (its
//! chunks, their log records released, the entries and read marks of its members and
//! senders, and the storage thread's tail and caches of it); an append that reaches the
//! storage thread after the room is gone keeps nothing, and making a room removes
//! whatever its name's conversation still holds. So a room never shows messages older
//! than itself.

use bytes::Bytes;
use ringrouter_proto::fast::copy_short;

use super::histlog::{Loc, LOC_BYTES};
use crate::shard::MSG_ID_SHARD_SHIFT;

/// Key tag of a chunk.
pub(crate) const CHUNK_TAG: u8 = b'c';
/// Key tag of a user's conversation entry.
pub(crate) const USER_TAG: u8 = b'u';
/// Key tag of a user's read mark.
pub(crate) const MARK_TAG: u8 = b'm';
/// Key tag of a history log file's live bytes (`f` + file id u32 → u64).
pub(crate) const FILE_TAG: u8 = b'f';
/// Key of the next history log file id (`F` → u32): ids never repeat across restarts.
pub(crate) const NEXT_FILE_TAG: u8 = b'F';
/// Key of the mark that the conversations of rooms deleted by older versions (which
/// left them behind) were cleaned (`R` → empty): the open-time sweep runs once.
pub(crate) const ROOMS_SWEPT_TAG: u8 = b'R';
/// Bytes of a chunk value's header (count u32, newest ts u64).
pub(crate) const CHUNK_HEADER: usize = 12;

/// Messages appended to one conversation (built by a shard in one loop turn): the
/// records already encoded ([`push_record`]), oldest first. The shard copies a small
/// message's sender and payload in here while its read buffer is hot, and the storage
/// thread copies whole runs of records into its segments: sharing a 64-byte payload
/// (a `Bytes` handle of the read buffer) took a reference count on the shard's core and
/// released it on the storage thread's, which cost more than the copy. A payload over
/// [`HistChunk::INLINE_MAX`] is still shared: its record in `data` has no payload bytes,
/// its length has [`SHARED_BIT`] set, and the payload is the next of `shared`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistChunk {
    /// Conversation id ([`dm_conv`] or [`room_conv`]).
    pub conv: Vec<u8>,
    /// The records, back to back.
    pub data: Vec<u8>,
    /// The payloads of the records marked shared, in order.
    pub shared: Vec<Bytes>,
}

/// Set in a record's payload length, in a [`HistChunk`] only: the payload is not in the
/// record but the chunk's next shared one. (Payloads are far below 2 GiB: frames are.)
pub(crate) const SHARED_BIT: u32 = 1 << 31;

impl HistChunk {
    /// Payloads up to this many bytes are copied into the record; larger ones shared.
    pub const INLINE_MAX: usize = 256;

    /// Bytes [`HistChunk::push_shared`] appends for this message.
    #[inline]
    pub fn record_len(from_user: &[u8], payload: &[u8]) -> usize {
        let copied = if payload.len() <= Self::INLINE_MAX {
            payload.len()
        } else {
            0
        };
        RECORD_FIXED + from_user.len().min(255) + copied
    }

    /// Appends one message, its payload copied.
    #[inline]
    pub fn push(&mut self, from_user: &[u8], msg_id: u64, ts_us: u64, payload: &[u8]) {
        push_record(&mut self.data, from_user, msg_id, ts_us, payload);
    }

    /// Appends one message: its payload copied if small, else shared.
    #[inline]
    pub fn push_shared(&mut self, from_user: &[u8], msg_id: u64, ts_us: u64, payload: &Bytes) {
        if payload.len() <= Self::INLINE_MAX {
            self.push(from_user, msg_id, ts_us, payload);
        } else {
            let len = u32::try_from(payload.len()).unwrap_or(u32::MAX) & !SHARED_BIT;
            push_record_head(
                &mut self.data,
                from_user,
                msg_id,
                ts_us,
                len | SHARED_BIT,
                0,
            );
            self.shared.push(payload.clone());
        }
    }
}

/// Bytes of a record besides its sender's name and payload (name length, msg_id, ts,
/// payload length).
pub(crate) const RECORD_FIXED: usize = 21;

/// A record of a [`HistChunk`]: its bytes in the chunk (header, and the payload unless
/// shared), its sender, `ts_us`, and whether its payload is shared.
pub(crate) struct ChunkRec<'a> {
    pub(crate) len: usize,
    pub(crate) from: &'a [u8],
    pub(crate) ts: u64,
    pub(crate) shared: bool,
}

/// The msg_id of the record at the start of `b`, whose sender is `from_len` bytes (0 if
/// `b` is short: only whole records, checked by [`chunk_rec`], are asked).
#[inline]
pub(crate) fn rec_msg_id(b: &[u8], from_len: usize) -> u64 {
    b.get(1 + from_len..).map_or(0, |r| be_u64(r).unwrap_or(0))
}

/// The record of a [`HistChunk`] at the start of `b` (`None`: not a whole record).
#[inline]
pub(crate) fn chunk_rec(b: &[u8]) -> Option<ChunkRec<'_>> {
    let n = usize::from(*b.first()?);
    let from = b.get(1..1 + n)?;
    let fixed = b.get(1 + n..n + RECORD_FIXED)?;
    let ts = u64::from_be_bytes(fixed.get(8..16)?.try_into().ok()?);
    let len = u32::from_be_bytes(fixed.get(16..20)?.try_into().ok()?);
    let shared = len & SHARED_BIT != 0;
    let total = RECORD_FIXED + n + if shared { 0 } else { len as usize };
    (total <= b.len()).then_some(ChunkRec {
        len: total,
        from,
        ts,
        shared,
    })
}

/// Consecutive messages of one conversation as the storage thread keeps them in memory
/// and then writes them: one stored chunk (key: the seq of its first message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Segment {
    /// Seq of the first message.
    pub(crate) first_seq: u64,
    /// Records in `data`.
    pub(crate) count: u32,
    /// Newest `server_ts_us` in `data`.
    pub(crate) last_ts: u64,
    /// Room for the stored value's header ([`CHUNK_HEADER`] bytes, filled when it is
    /// written), then the records, oldest first, without the payloads in `shared`.
    pub(crate) data: Vec<u8>,
    /// The payloads a shard shared ([`HistChunk::shared`]), each with the length of
    /// `data` it follows: kept by reference until written, and written from where they
    /// are (copying a 1 KiB payload into `data` was a fifth of the storage thread's
    /// time at 16 × 1 KiB).
    pub(crate) shared: Vec<(usize, Bytes)>,
    /// Bytes of the payloads in `shared`.
    pub(crate) shared_bytes: usize,
    /// When its oldest payload in `shared` came (`None`: `shared` is empty).
    pub(crate) shared_since: Option<std::time::Instant>,
    /// The msg_ids of its records, per shard.
    pub(crate) ids: IdRanges,
    /// Where its last record starts in its records as written (what ListConversations
    /// reads of a stored chunk: [`chunk_last_at`]).
    pub(crate) last_at: u32,
}

/// Per shard that issued some of a chunk's msg_ids (their top bits), the smallest and
/// the largest: a History `before` or a MarkRead looks for a msg_id only in the chunks
/// whose ranges hold it, reading each chunk's pointer instead of its records. A shard's
/// ids grow with time (its counter starts at the clock), so its range in a chunk is
/// narrow. Kept in the chunk's value after its [`Loc`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct IdRanges {
    /// (smallest, largest), one per shard.
    ranges: Vec<(u64, u64)>,
    /// More shards than [`ID_RANGES_MAX`]: may hold any id.
    any: bool,
}

/// Most ranges kept in a chunk's [`IdRanges`].
const ID_RANGES_MAX: usize = 64;

impl IdRanges {
    /// Counts `id` in.
    #[inline]
    pub(crate) fn note(&mut self, id: u64) {
        // Most records of a chunk come from the shard of the one before.
        if let Some(r) = self.ranges.last_mut() {
            if (r.0 ^ id) >> MSG_ID_SHARD_SHIFT == 0 {
                *r = (r.0.min(id), r.1.max(id));
                return;
            }
        }
        self.note_other(id);
    }

    /// [`IdRanges::note`] of an id from another shard than the last one's.
    fn note_other(&mut self, id: u64) {
        if self.any {
            // (Ids a client chose, as the web client's random ones, fill the ranges at
            // once: past that, nothing more to look at per record.)
            return;
        }
        let shard = id >> MSG_ID_SHARD_SHIFT;
        if let Some(r) = self
            .ranges
            .iter_mut()
            .find(|r| r.0 >> MSG_ID_SHARD_SHIFT == shard)
        {
            *r = (r.0.min(id), r.1.max(id));
        } else if self.ranges.len() < ID_RANGES_MAX {
            self.ranges.push((id, id));
        } else {
            self.any = true;
        }
    }

    /// The ranges of encoded records' msg_ids.
    pub(crate) fn of_records(data: &[u8]) -> IdRanges {
        let mut ids = IdRanges::default();
        for r in records(data) {
            ids.note(r.1);
        }
        ids
    }

    /// False when no record has `id` (a range holds only its own shard's ids).
    pub(crate) fn may_hold(&self, id: u64) -> bool {
        self.any || self.ranges.iter().any(|&(lo, hi)| lo <= id && id <= hi)
    }

    /// Count (u16 BE; `u16::MAX`: any id), then (smallest, largest) as u64 BE each.
    fn encode(&self, out: &mut Vec<u8>) {
        if self.any {
            out.extend_from_slice(&u16::MAX.to_be_bytes());
            return;
        }
        out.extend_from_slice(&(self.ranges.len() as u16).to_be_bytes());
        for (lo, hi) in &self.ranges {
            out.extend_from_slice(&lo.to_be_bytes());
            out.extend_from_slice(&hi.to_be_bytes());
        }
    }

    /// The encoding at the start of `b`, and the bytes it takes (`None`: not one).
    fn decode(b: &[u8]) -> Option<(IdRanges, usize)> {
        let n = u16::from_be_bytes(b.get(..2)?.try_into().ok()?);
        if n == u16::MAX {
            let any = IdRanges {
                ranges: Vec::new(),
                any: true,
            };
            return Some((any, 2));
        }
        let len = usize::from(n) * 16;
        let body = b.get(2..2 + len)?;
        let ranges = body
            .chunks_exact(16)
            .map(|c| (be_u64(c).unwrap_or(0), be_u64(&c[8..]).unwrap_or(u64::MAX)))
            .collect();
        Some((IdRanges { ranges, any: false }, 2 + len))
    }
}

impl Segment {
    /// An empty segment whose first message will have `first_seq`, with room for `bytes`.
    pub(crate) fn new(first_seq: u64, bytes: usize) -> Segment {
        let mut data = Vec::with_capacity(CHUNK_HEADER + bytes);
        data.resize(CHUNK_HEADER, 0);
        Segment {
            first_seq,
            count: 0,
            last_ts: 0,
            data,
            shared: Vec::new(),
            shared_bytes: 0,
            shared_since: None,
            ids: IdRanges::default(),
            last_at: 0,
        }
    }

    /// Where a record appended now starts in the records as written.
    fn end_at(&self) -> usize {
        self.data.len() - CHUNK_HEADER + self.shared_bytes
    }

    /// Appends `count` whole records (encoded), the newest `ts_us` among them `last_ts`,
    /// the last one `last` bytes into `recs`.
    pub(crate) fn push_records(&mut self, recs: &[u8], count: u32, last_ts: u64, last: usize) {
        if count > 0 {
            self.last_at = (self.end_at() + last) as u32;
        }
        self.data.extend_from_slice(recs);
        self.count += count;
        self.last_ts = self.last_ts.max(last_ts);
    }

    /// Appends one record whose payload a shard shared: `head` is its header as the
    /// chunk had it (the length's [`SHARED_BIT`] set), `payload` the payload.
    /// The payload is kept by reference, not copied (see [`Segment::shared`]).
    pub(crate) fn push_shared_record(&mut self, head: &[u8], payload: Bytes, ts: u64, msg_id: u64) {
        self.ids.note(msg_id);
        self.last_at = self.end_at() as u32;
        self.data.extend_from_slice(head);
        let n = self.data.len();
        if let Some(len) = self.data.get_mut(n.saturating_sub(4)..) {
            len.copy_from_slice(&(payload.len() as u32).to_be_bytes());
        }
        self.shared_bytes += payload.len();
        self.shared.push((n, payload));
        self.shared_since
            .get_or_insert_with(std::time::Instant::now);
        self.count += 1;
        self.last_ts = self.last_ts.max(ts);
    }

    /// Bytes of the records (with the shared payloads): what the stored chunk holds.
    pub(crate) fn records_len(&self) -> usize {
        self.data.len() - CHUNK_HEADER + self.shared_bytes
    }

    /// Memory the segment holds: its buffers, and the shared payloads (counted by their
    /// length: a reader copies payloads out of a chunk they would keep alive mostly
    /// empty, `net::session`).
    pub(crate) fn held(&self) -> usize {
        self.data.capacity()
            + self.shared.capacity() * std::mem::size_of::<(usize, Bytes)>()
            + self.shared_bytes
    }

    /// Copies the shared payloads into `data` (the records then are `data`'s) and lets
    /// go of them.
    /// What comes before the first shared payload stays where it is, and `data` grows
    /// as a `Vec` does (a segment still filling is copied this way every `PIN_MAX`: a
    /// buffer of exactly its size was copied whole again by the next append).
    pub(crate) fn unshare(&mut self) {
        let Some(&(first, _)) = self.shared.first() else {
            return;
        };
        let after = self.data.split_off(first.min(self.data.len()));
        self.data.reserve(after.len() + self.shared_bytes);
        let mut from = 0;
        for (at, p) in std::mem::take(&mut self.shared) {
            let to = at.saturating_sub(first);
            self.data
                .extend_from_slice(after.get(from..to).unwrap_or_default());
            self.data.extend_from_slice(&p);
            from = to;
        }
        self.data
            .extend_from_slice(after.get(from..).unwrap_or_default());
        self.shared_bytes = 0;
        self.shared_since = None;
    }

    /// The records, in pieces, in order: what [`Segment::records`] joins.
    pub(crate) fn record_pieces(&self) -> Vec<&[u8]> {
        let mut v = Vec::with_capacity(2 * self.shared.len() + 1);
        let mut from = CHUNK_HEADER;
        for (at, p) in &self.shared {
            v.extend(self.data.get(from..*at).filter(|s| !s.is_empty()));
            v.push(&p[..]);
            from = *at;
        }
        v.extend(self.data.get(from..).filter(|s| !s.is_empty()));
        v
    }

    /// The records (borrowed when no payload is shared; else joined, for a read of what
    /// is not written yet).
    pub(crate) fn records(&self) -> std::borrow::Cow<'_, [u8]> {
        if self.shared.is_empty() {
            return std::borrow::Cow::Borrowed(self.data.get(CHUNK_HEADER..).unwrap_or_default());
        }
        std::borrow::Cow::Owned(self.record_pieces().concat())
    }

    /// Its records in order, payloads read where they are (what [`records`] of
    /// [`Segment::records`] gives, without joining them: a lookup by msg_id in a tail
    /// copied the segment, up to 64 KiB, for each one it looked at).
    pub(crate) fn iter_records(&self) -> impl Iterator<Item = RawRecord<'_>> {
        let mut at = CHUNK_HEADER;
        let mut shared = self.shared.iter().peekable();
        std::iter::from_fn(move || {
            let rest = self.data.get(at..).filter(|r| !r.is_empty())?;
            let (from, r) = take_name(rest)?;
            let msg_id = be_u64(r)?;
            let ts = be_u64(r.get(8..)?)?;
            let len = u32::from_be_bytes(r.get(16..20)?.try_into().ok()?) as usize;
            let head_end = at + (rest.len() - r.len()) + 20;
            if shared.peek().is_some_and(|(p, _)| *p == head_end) {
                let (_, payload) = shared.next()?;
                at = head_end;
                return Some((from, msg_id, ts, &payload[..]));
            }
            let payload = self.data.get(head_end..head_end + len)?;
            at = head_end + len;
            Some((from, msg_id, ts, payload))
        })
    }

    /// Seq after its last message.
    pub(crate) fn end_seq(&self) -> u64 {
        self.first_seq + u64::from(self.count)
    }

    /// The value of an inline chunk (the layout before the history log, which is still
    /// read): header then records (the header written into the room left for it).
    #[cfg(test)]
    pub(crate) fn into_value(self) -> Vec<u8> {
        let mut v = self.data[..CHUNK_HEADER].to_vec();
        v.extend_from_slice(&self.records());
        v[..4].copy_from_slice(&self.count.to_be_bytes());
        v[4..CHUNK_HEADER].copy_from_slice(&self.last_ts.to_be_bytes());
        v
    }
}

/// One message of a conversation's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistMsg {
    /// The sender.
    pub from_user: String,
    /// The payload.
    pub payload: Bytes,
    /// Message id.
    pub msg_id: u64,
    /// Router clock at acceptance, µs since the epoch.
    pub ts_us: u64,
}

/// What a history query asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistQuery {
    /// The user asking (a participant of a direct conversation; a member of a room).
    pub user: String,
    /// The direct conversation with this user, or ...
    pub peer: Option<String>,
    /// ... this room's.
    pub room: Option<String>,
    /// Messages before this msg_id; 0: from the newest.
    pub before: u64,
    /// Most messages.
    pub limit: usize,
    /// Most bytes of messages (their payloads and names, plus [`PAGE_MSG_OVERHEAD`]
    /// each): a page stops before it would pass them, with at least one message. The
    /// router sets its frame limit, so a page of big messages stays one frame that
    /// clients can read.
    pub max_bytes: usize,
}

/// What a message of a page counts besides its payload and sender: its Deliver's
/// other fields (room, ids, timestamp) and framing.
pub const PAGE_MSG_OVERHEAD: usize = 160;

/// The answer to a history query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistPage {
    /// The messages, oldest first.
    Messages(Vec<HistMsg>),
    /// A room the user is not a member of.
    Forbidden,
    /// `before` is not in the history kept.
    BeforeNotFound,
    /// `before` is no page's cursor and not in the chunks a lookup may look at
    /// ([`HistoryOptions::lookup_chunks`]): it may be kept, further back.
    BeforeBeyondLookup,
}

/// One conversation of a user's list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvSummary {
    /// The peer of a direct conversation.
    pub peer: Option<String>,
    /// The room.
    pub room: Option<String>,
    /// The newest message kept.
    pub last: HistMsg,
    /// Messages after the last one the user sent in it (all kept ones if none).
    pub unread: u64,
}

/// Retention, as the storage thread applies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HistoryOptions {
    /// Messages kept per conversation (0: history off).
    pub per_conversation: u64,
    /// Nothing older than this is kept.
    pub max_age: Option<std::time::Duration>,
    /// Most bytes of stored chunks per conversation (0: no byte bound): past it the
    /// oldest chunks go, whatever `per_conversation` allows.
    pub max_bytes: u64,
    /// Under `Durability::Memory`: bytes of history the storage thread holds in memory
    /// before it writes them (0: written in the round that appended them, as in sync).
    pub memory_bytes: usize,
    /// Under `Durability::Memory`: history held in memory is written at least this often.
    pub flush_every: std::time::Duration,
    /// Under `Durability::Memory`: bytes the tails of hot conversations (through their
    /// window of `per_conversation` messages twice within `flush_every`) may hold past
    /// `memory_bytes`, so that what their window drops within the interval is never
    /// written (0: none; every tail is written at `memory_bytes`).
    pub hot_bytes: usize,
    /// Size at which a history log file is closed for appends (0: 32 MiB; tests make it
    /// small to see files roll, die and compact).
    pub log_file_bytes: u64,
    /// Most chunks (stored ones, or segments in memory) whose records one lookup of a
    /// msg_id reads: a History `before` that no recent page ended at, a MarkRead. It
    /// looks at the pointers of every chunk a conversation can keep (`per_conversation`),
    /// newest first, reading those whose ranges may hold the id; past either bound the
    /// id counts as not found. 0:
    /// [`LOOKUP_CHUNKS_DEFAULT`]. (The msg_ids are the clients': ids that make every
    /// chunk's ranges hold any id cost one request this much, not the conversation.)
    pub lookup_chunks: usize,
}

/// [`HistoryOptions::lookup_chunks`] when it is 0: about the chunks a page of large
/// messages reads.
pub const LOOKUP_CHUNKS_DEFAULT: usize = 16;

impl HistoryOptions {
    /// (Most chunks one msg_id lookup reads, most chunk pointers it looks at.) Every
    /// chunk of a conversation kept whole (at most `per_conversation`, one message each)
    /// may be looked at: skipping a chunk by its ranges costs about a fiftieth of reading
    /// it (measured: 700 pointers in 0.3 ms, 12 chunks of a 1 MiB page in 0.7 ms), so
    /// an id the ranges place in one chunk is found however far back; only chunks whose
    /// ranges may hold it are read.
    pub(crate) fn lookup_bounds(&self) -> (usize, usize) {
        let reads = match self.lookup_chunks {
            0 => LOOKUP_CHUNKS_DEFAULT,
            n => n,
        };
        let all = usize::try_from(self.per_conversation).unwrap_or(usize::MAX);
        (reads, all.max(reads))
    }
}

fn push_name(out: &mut Vec<u8>, name: &[u8]) {
    // Names are at most 64 bytes (checked where frames are decoded); clamp anyway.
    let n = name.len().min(255);
    out.push(n as u8);
    out.extend_from_slice(&name[..n]);
}

/// The id of the direct conversation between `a` and `b` (the same both ways).
pub fn dm_conv(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(3 + a.len() + b.len());
    dm_conv_into(&mut out, a, b);
    out
}

/// [`dm_conv`] into `out` (cleared first).
pub fn dm_conv_into(out: &mut Vec<u8>, a: &[u8], b: &[u8]) {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    out.clear();
    out.push(b'd');
    push_name(out, lo);
    push_name(out, hi);
}

/// The id of a room's conversation.
pub fn room_conv(room: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + room.len());
    room_conv_into(&mut out, room);
    out
}

/// [`room_conv`] into `out` (cleared first).
pub fn room_conv_into(out: &mut Vec<u8>, room: &[u8]) {
    out.clear();
    out.push(b'r');
    push_name(out, room);
}

/// What a conversation id names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConvName<'a> {
    /// A direct conversation between two users (in byte order).
    Direct(&'a [u8], &'a [u8]),
    /// A room.
    Room(&'a [u8]),
}

fn take_name(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let (&n, rest) = b.split_first()?;
    let n = n as usize;
    (rest.len() >= n).then(|| rest.split_at(n))
}

/// Parses a conversation id (`None`: corrupt).
pub fn parse_conv(id: &[u8]) -> Option<ConvName<'_>> {
    let (&tag, rest) = id.split_first()?;
    match tag {
        b'd' => {
            let (a, rest) = take_name(rest)?;
            let (b, rest) = take_name(rest)?;
            rest.is_empty().then_some(ConvName::Direct(a, b))
        }
        b'r' => {
            let (r, rest) = take_name(rest)?;
            rest.is_empty().then_some(ConvName::Room(r))
        }
        _ => None,
    }
}

/// Appends one record: sender (length byte, name), msg_id, ts_us, payload length (u32),
/// payload.
pub fn push_record(out: &mut Vec<u8>, from_user: &[u8], msg_id: u64, ts_us: u64, payload: &[u8]) {
    let len = payload.len() as u32;
    push_record_head(out, from_user, msg_id, ts_us, len, payload.len());
    let at = out.len();
    // Without a `memcpy` call for a small payload (`copy_short`).
    // SAFETY: `push_record_head` reserved `payload.len()` bytes after the header (its
    // `more`), so they are spare capacity from `at`; the length covers them once
    // written, and `payload` is not in `out` (a `&mut` to it is held).
    unsafe {
        copy_short(payload.as_ptr(), out.as_mut_ptr().add(at), payload.len());
        out.set_len(at + payload.len());
    }
}

/// Appends a record's header (all but the payload), its length field `len`, with room
/// reserved for `more` bytes after it.
#[inline]
pub(crate) fn push_record_head(
    out: &mut Vec<u8>,
    from_user: &[u8],
    msg_id: u64,
    ts_us: u64,
    len: u32,
    more: usize,
) {
    // Names are at most 64 bytes (checked where frames are decoded); clamp anyway.
    let n = from_user.len().min(255);
    // What the writes below cover: the name's length, the name, msg_id, ts and len.
    const _: () = assert!(RECORD_FIXED == 1 + 8 + 8 + 4);
    let head = RECORD_FIXED + n;
    out.reserve(head.saturating_add(more));
    let start = out.len();
    // Written in place with one capacity check (this runs once per message kept in
    // history; four checked appends cost ~40 instructions more, `bench/ir.sh`).
    // SAFETY: `reserve` left at least `head` bytes of spare capacity after `start`; every
    // one of them is written below before the length covers them, and no source is in
    // `out`.
    unsafe {
        let dst = out.as_mut_ptr().add(start);
        dst.write(n as u8);
        copy_short(from_user.as_ptr(), dst.add(1), n);
        let fixed = dst.add(1 + n);
        std::ptr::copy_nonoverlapping(msg_id.to_be_bytes().as_ptr(), fixed, 8);
        std::ptr::copy_nonoverlapping(ts_us.to_be_bytes().as_ptr(), fixed.add(8), 8);
        std::ptr::copy_nonoverlapping(len.to_be_bytes().as_ptr(), fixed.add(16), 4);
        out.set_len(start + head);
    }
}

/// A record as read back: (sender, msg_id, ts_us, payload).
pub(crate) type RawRecord<'a> = (&'a [u8], u64, u64, &'a [u8]);

fn be_u64(b: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(..8)?.try_into().ok()?))
}

/// The records of `data`, in order (stops at a corrupt one).
pub(crate) fn records(mut data: &[u8]) -> impl Iterator<Item = RawRecord<'_>> {
    std::iter::from_fn(move || {
        if data.is_empty() {
            return None;
        }
        let (from, rest) = take_name(data)?;
        let msg_id = be_u64(rest)?;
        let ts = be_u64(rest.get(8..)?)?;
        let len = u32::from_be_bytes(rest.get(16..20)?.try_into().ok()?) as usize;
        let payload = rest.get(20..20 + len)?;
        data = &rest[20 + len..];
        Some((from, msg_id, ts, payload))
    })
}

/// Where a stored chunk's records are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChunkBody<'a> {
    /// In the value (chunks written before the history log).
    Inline(&'a [u8]),
    /// In the history log (`store::histlog`).
    Log(Loc),
}

/// The bit of a chunk value's count that says its records are in the history log.
const IN_LOG: u32 = 1 << 31;

/// A chunk value's (count, newest ts, where its records are) (`None`: corrupt).
pub(crate) fn parse_chunk(v: &[u8]) -> Option<(u32, u64, ChunkBody<'_>)> {
    let count = u32::from_be_bytes(v.get(..4)?.try_into().ok()?);
    let ts = be_u64(v.get(4..)?)?;
    let rest = v.get(CHUNK_HEADER..)?;
    if count & IN_LOG == 0 {
        return Some((count, ts, ChunkBody::Inline(rest)));
    }
    Some((
        count & !IN_LOG,
        ts,
        ChunkBody::Log(Loc::decode(rest.get(..LOC_BYTES)?)?),
    ))
}

/// What a log chunk's value holds after its pointer: its msg_id ranges, and where its
/// last record starts (`None`: an inline chunk, a value written before the ranges were
/// kept, or a torn one; a value written before the last record's place was kept has
/// the ranges only).
fn chunk_tail(v: &[u8]) -> Option<(IdRanges, Option<u32>)> {
    let count = u32::from_be_bytes(v.get(..4)?.try_into().ok()?);
    if count & IN_LOG == 0 {
        return None;
    }
    let b = v.get(CHUNK_HEADER + LOC_BYTES..)?;
    let (ids, n) = IdRanges::decode(b)?;
    match b.get(n..)? {
        [] => Some((ids, None)),
        &[a, b, c, d] => Some((ids, Some(u32::from_be_bytes([a, b, c, d])))),
        _ => None,
    }
}

/// The msg_id ranges of a chunk's value (`None`: a value written before they were kept,
/// or an inline chunk: it may hold any id).
pub(crate) fn chunk_ids(v: &[u8]) -> Option<IdRanges> {
    chunk_tail(v).map(|(ids, _)| ids)
}

/// Where the last record of a log chunk starts in its records (`None`: not kept; the
/// records are read whole to find it).
pub(crate) fn chunk_last_at(v: &[u8]) -> Option<u32> {
    chunk_tail(v).and_then(|(_, at)| at)
}

/// The value of a chunk whose records are in the history log at `loc`, its last record
/// `last_at` bytes into them.
pub(crate) fn log_chunk_value(
    count: u32,
    last_ts: u64,
    loc: Loc,
    ids: &IdRanges,
    last_at: u32,
) -> Vec<u8> {
    let mut v = Vec::with_capacity(CHUNK_HEADER + LOC_BYTES + 2 + 16 * ids.ranges.len() + 4);
    v.extend_from_slice(&(count | IN_LOG).to_be_bytes());
    v.extend_from_slice(&last_ts.to_be_bytes());
    loc.encode(&mut v);
    ids.encode(&mut v);
    v.extend_from_slice(&last_at.to_be_bytes());
    v
}

/// Where the last whole record of `records` (as written) starts.
pub(crate) fn last_record_at(records: &[u8]) -> usize {
    let (mut p, mut last) = (0, 0);
    while let Some(r) = records.get(p..).and_then(chunk_rec) {
        last = p;
        p += r.len;
    }
    last
}

/// `c` + conversation id: the prefix of its chunks.
pub(crate) fn chunk_prefix(conv: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + conv.len() + 8);
    k.push(CHUNK_TAG);
    k.extend_from_slice(conv);
    k
}

/// The key of the chunk of `conv` starting at `seq`.
pub(crate) fn chunk_key(conv: &[u8], seq: u64) -> Vec<u8> {
    let mut k = chunk_prefix(conv);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The first seq of a chunk key under `prefix`.
pub(crate) fn chunk_seq(prefix: &[u8], key: &[u8]) -> Option<u64> {
    let rest = key.strip_prefix(prefix)?;
    (rest.len() == 8).then(|| be_u64(rest)).flatten()
}

/// `u` + user: the prefix of a user's conversation entries.
pub(crate) fn user_prefix(user: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + user.len() + 70);
    k.push(USER_TAG);
    push_name(&mut k, user);
    k
}

/// The key of `user`'s entry for `conv`.
pub(crate) fn user_key(user: &[u8], conv: &[u8]) -> Vec<u8> {
    let mut k = user_prefix(user);
    k.extend_from_slice(conv);
    k
}

/// `m` + user: the prefix of a user's read marks.
pub(crate) fn mark_prefix(user: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + user.len() + 70);
    k.push(MARK_TAG);
    push_name(&mut k, user);
    k
}

/// The key of `user`'s read mark in `conv`.
pub(crate) fn mark_key(user: &[u8], conv: &[u8]) -> Vec<u8> {
    let mut k = mark_prefix(user);
    k.extend_from_slice(conv);
    k
}

/// The conversation id of a conversation entry or read mark key (`u`/`m` + length byte +
/// user + conversation id; `None`: not such a key).
pub(crate) fn entry_conv(key: &[u8]) -> Option<&[u8]> {
    let n = usize::from(*key.get(1)?);
    key.get(2 + n..)
}

/// The user of an entry or read mark key (`u`/`m` + length byte + user + conversation).
pub(crate) fn entry_user(key: &[u8]) -> Option<&[u8]> {
    let n = usize::from(*key.get(1)?);
    key.get(2..2 + n)
}

pub(crate) fn decode_u64(v: &[u8]) -> u64 {
    be_u64(v).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dm_conv_is_the_same_both_ways_and_parses_back() {
        assert_eq!(dm_conv(b"bob", b"alice"), dm_conv(b"alice", b"bob"));
        let id = dm_conv(b"bob", b"alice");
        assert_eq!(
            parse_conv(&id),
            Some(ConvName::Direct(&b"alice"[..], &b"bob"[..]))
        );
        assert_eq!(
            parse_conv(&room_conv(b"r1")),
            Some(ConvName::Room(&b"r1"[..]))
        );
        assert_eq!(parse_conv(b"d\x05ab"), None);
        // Length-prefixed: no conversation's chunk prefix is another's.
        assert!(
            !chunk_prefix(&dm_conv(b"a", b"bc")).starts_with(&chunk_prefix(&dm_conv(b"a", b"b")))
        );
    }

    #[test]
    fn a_segment_keeps_shared_payloads_apart_and_joins_them_in_order() {
        let (a, b) = (
            Bytes::from(vec![1u8; HistChunk::INLINE_MAX + 1]),
            Bytes::from(vec![2u8; 300]),
        );
        let mut c = HistChunk::default();
        c.push(b"x", 1, 10, b"inline");
        c.push_shared(b"y", 2, 11, &a);
        c.push_shared(b"y", 3, 12, &b);
        c.push(b"x", 4, 13, b"last");
        // The same messages with every payload inline: what the stored chunk holds.
        let mut want = Vec::new();
        push_record(&mut want, b"x", 1, 10, b"inline");
        push_record(&mut want, b"y", 2, 11, &a);
        push_record(&mut want, b"y", 3, 12, &b);
        push_record(&mut want, b"x", 4, 13, b"last");
        let mut seg = Segment::new(1, 0);
        let mut shared = c.shared.clone().into_iter();
        let mut p = 0;
        while let Some(r) = chunk_rec(&c.data[p..]) {
            let head = &c.data[p..p + r.len];
            match r.shared {
                true => seg.push_shared_record(head, shared.next().unwrap(), r.ts, 0),
                false => seg.push_records(head, 1, r.ts, 0),
            }
            p += r.len;
        }
        assert_eq!(seg.shared.len(), 2, "not copied");
        assert_eq!(seg.records_len(), want.len());
        assert_eq!(&seg.records()[..], &want[..]);
        assert_eq!(seg.record_pieces().concat(), want);
        // Where the last record starts, as written: what ListConversations reads.
        let at = seg.last_at as usize;
        assert_eq!(at, last_record_at(&want));
        let tail: Vec<_> = records(&want[at..]).collect();
        assert_eq!(tail, [(&b"x"[..], 4, 13, &b"last"[..])]);
        assert!(seg.held() >= a.len() + b.len() + seg.data.len());
        assert_eq!(records(&seg.records()).count(), 4);
        assert!(seg.iter_records().eq(records(&want)), "read in place");
        let mut copied = seg.clone();
        copied.unshare();
        assert!(copied.shared.is_empty() && copied.shared_bytes == 0);
        assert_eq!(copied.last_at, seg.last_at);
        assert_eq!(
            (&copied.records()[..], copied.records_len()),
            (&want[..], want.len())
        );
        assert!(matches!(copied.records(), std::borrow::Cow::Borrowed(_)));
        let v = seg.clone().into_value();
        let (count, ts, body) = parse_chunk(&v).unwrap();
        assert_eq!((count, ts), (4, 13));
        assert!(matches!(body, ChunkBody::Inline(d) if d == &want[..]));
    }

    #[test]
    fn records_are_exact_at_every_name_and_payload_length_around_the_copy_thresholds() {
        // The name and a copied payload go in through `copy_short` (moves of 4 to 64
        // bytes, single bytes below 4, a call past 128): every length from 0 to past
        // the call's, the bytes read back as written, the records one after the other.
        let mut c = HistChunk::default();
        let mut want = Vec::new();
        for n in 0..=HistChunk::INLINE_MAX {
            let name: Vec<u8> = (0..n % 70).map(|k| b'a' + (k % 26) as u8).collect();
            let payload: Vec<u8> = (0..n).map(|k| (k * 7 + n) as u8).collect();
            c.push(&name, n as u64, 1000 + n as u64, &payload);
            want.push(name.len() as u8);
            want.extend_from_slice(&name);
            want.extend_from_slice(&(n as u64).to_be_bytes());
            want.extend_from_slice(&(1000 + n as u64).to_be_bytes());
            want.extend_from_slice(&(n as u32).to_be_bytes());
            want.extend_from_slice(&payload);
        }
        assert_eq!(c.data, want);
    }

    #[test]
    fn records_round_trip() {
        let mut c = HistChunk::default();
        c.push(b"alice", 7, 100, b"hi");
        c.push(b"bob", 8, 90, b"");
        let r = chunk_rec(&c.data).unwrap();
        assert_eq!(
            (r.len, r.from, r.ts, r.shared),
            (RECORD_FIXED + 7, &b"alice"[..], 100, false)
        );
        assert!(chunk_rec(&c.data[..RECORD_FIXED + 6]).is_none());
        // A big payload is shared: its record in the chunk is the header alone.
        let mut big = HistChunk::default();
        big.push_shared(
            b"al",
            9,
            5,
            &Bytes::from(vec![7u8; HistChunk::INLINE_MAX + 1]),
        );
        big.push_shared(b"al", 10, 6, &Bytes::from_static(b"small"));
        let r = chunk_rec(&big.data).unwrap();
        assert_eq!((r.len, r.ts, r.shared), (RECORD_FIXED + 2, 5, true));
        let r2 = chunk_rec(&big.data[r.len..]).unwrap();
        assert_eq!((r2.len, r2.shared), (RECORD_FIXED + 2 + 5, false));
        assert_eq!((r.len + r2.len, big.shared.len()), (big.data.len(), 1));
        let mut seg = Segment::new(1, 0);
        seg.push_records(&c.data, 2, 100, last_record_at(&c.data));
        assert_eq!(seg.data.len(), CHUNK_HEADER + 2 * RECORD_FIXED + 5 + 2 + 3);
        let v = seg.into_value();
        let (count, ts, data) = parse_chunk(&v).unwrap();
        assert_eq!((count, ts), (2, 100));
        let ChunkBody::Inline(data) = data else {
            panic!("inline")
        };
        let r: Vec<_> = records(data).collect();
        assert_eq!(
            r,
            vec![
                (&b"alice"[..], 7, 100, &b"hi"[..]),
                (&b"bob"[..], 8, 90, &b""[..])
            ]
        );
        // A truncated record ends the iteration instead of panicking.
        assert_eq!(records(&data[..data.len() - 3]).count(), 1);
        // Names of 0 and of more than 255 bytes (clamped), written in place after other
        // records and into a buffer with spare room.
        let long = vec![b'n'; 300];
        let mut out = Vec::with_capacity(4096);
        push_record(&mut out, b"", u64::MAX, 1, b"x");
        push_record(&mut out, &long, 3, u64::MAX - 1, &[9u8; 200]);
        push_record(&mut out, b"z", 0, 0, b"");
        let r: Vec<_> = records(&out).collect();
        assert_eq!(
            r,
            vec![
                (&b""[..], u64::MAX, 1, &b"x"[..]),
                (&long[..255], 3, u64::MAX - 1, &[9u8; 200][..]),
                (&b"z"[..], 0, 0, &b""[..])
            ]
        );
        assert_eq!(out.len(), 3 * RECORD_FIXED + 255 + 1 + 1 + 200);
        // `record_len` is what `push_shared` appends: a copied payload, or a shared one.
        for payload in [
            vec![1u8; HistChunk::INLINE_MAX],
            vec![2u8; HistChunk::INLINE_MAX + 1],
        ] {
            let mut c = HistChunk::default();
            c.push_shared(b"alice", 1, 2, &Bytes::from(payload.clone()));
            assert_eq!(c.data.len(), HistChunk::record_len(b"alice", &payload));
        }
    }

    #[test]
    fn a_log_chunk_value_round_trips_and_is_told_from_an_inline_one() {
        let loc = Loc {
            file: 3,
            offset: 1 << 40,
            len: 65_000,
        };
        let mut ids = IdRanges::default();
        let (a, b) = (2 << MSG_ID_SHARD_SHIFT, 1 << MSG_ID_SHARD_SHIFT);
        for id in [a + 10, b + 7, a + 12, b + 5] {
            ids.note(id);
        }
        let v = log_chunk_value(512, 99, loc, &ids, 64_001);
        assert_eq!(parse_chunk(&v), Some((512, 99, ChunkBody::Log(loc))));
        let back = chunk_ids(&v).unwrap();
        assert_eq!(back, ids);
        assert_eq!(chunk_last_at(&v), Some(64_001));
        // A value from before the last record's place was kept: the ranges, no place.
        let before = &v[..v.len() - 4];
        assert_eq!(
            (chunk_ids(before), chunk_last_at(before)),
            (Some(ids.clone()), None)
        );
        assert_eq!(chunk_ids(&v[..v.len() - 1]), None, "a torn place is torn");
        // Per shard: shard 2's range does not take shard 1's ids between them.
        assert!(back.may_hold(a + 11) && back.may_hold(b + 6) && back.may_hold(b + 5));
        assert!(!back.may_hold(a + 13) && !back.may_hold(b + 4) && !back.may_hold(b + 11));
        // Past ID_RANGES_MAX shards: any id.
        let mut many = IdRanges::default();
        for s in 1..=ID_RANGES_MAX as u64 + 1 {
            many.note(s << MSG_ID_SHARD_SHIFT);
        }
        let v = log_chunk_value(1, 1, loc, &many, 0);
        assert!(chunk_ids(&v).unwrap().may_hold(12345));
        assert_eq!(chunk_last_at(&v), Some(0));
        // A value from before the ranges: none (any id), and still a chunk.
        let mut old = v[..CHUNK_HEADER + LOC_BYTES].to_vec();
        assert!(chunk_ids(&old).is_none());
        assert!(parse_chunk(&old).is_some());
        old.push(0);
        assert!(chunk_ids(&old).is_none(), "a torn encoding is none");
        assert_eq!(
            parse_chunk(&old[..CHUNK_HEADER + LOC_BYTES - 1]),
            None,
            "a short pointer is corrupt"
        );
    }
}

#[cfg(test)]
#[path = "history_tests.rs"]
mod store_tests;
