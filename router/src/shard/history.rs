//! History appends of this shard: every message accepted here for a direct conversation
//! (on the recipient's home shard) or a room (on the room's home shard, members only) is
//! added to its conversation's chunk for this loop turn as an encoded record: the
//! sender's name and a small payload copied while the read buffer is hot (sharing them
//! took a reference count here and released it on the storage thread, per message), a
//! payload over `HistChunk::INLINE_MAX` shared. The flusher hands the turn's chunks to the
//! store as one request
//! (`store::history`). In `sync` durability the list goes out at once, before the
//! message's own journal request, so it is in the same group commit or an earlier one:
//! never behind a SendResult OK. Nothing at all when `--history-per-conversation` is 0.

use crate::maps::NameMap;
use bytes::Bytes;
use ringrouter_proto::names::name_eq;

use super::{SessionKey, Shard};
use crate::store::history::{dm_conv_into, room_conv_into};
use crate::store::HistChunk;

/// The messages of the current loop turn, per conversation.
#[derive(Default)]
pub struct HistBuf {
    chunks: Vec<HistChunk>,
    /// Conversation id → index in `chunks`.
    index: NameMap<Vec<u8>, usize>,
    /// The chunk the previous message went to (consecutive messages of one
    /// conversation skip the map).
    last: usize,
    scratch: Vec<u8>,
    /// The names of the previous direct message (`scratch` is their conversation id):
    /// the next one between the same two users skips building the id.
    last_pair: (Vec<u8>, Vec<u8>),
    /// `chunks[last]` is the conversation `scratch` names (no need to compare them).
    last_is_scratch: bool,
    /// The payloads the chunks share (the records' capacity is counted at the flush).
    bytes: usize,
    /// The most bytes one conversation got in the previous turn: a new chunk's
    /// capacity, so a busy conversation's records are not grown (copied) message by message.
    hint: usize,
    /// Bytes of capacity given to this turn's chunks so far (at most `prealloc_max` go by
    /// the hint: a turn of many small conversations allocates little).
    prealloc: usize,
    /// At most [`PREALLOC_MAX`], and a sixteenth of the store queue's bound: the capacity
    /// a flush counts towards that bound is never mostly room the hint reserved.
    prealloc_max: usize,
    /// Per chunk: the bytes its conversation has in the chunks before it this turn (a
    /// full chunk is followed by another), so that the hint is a conversation's total.
    earlier: Vec<usize>,
}

/// Bounds of [`HistBuf::hint`], bytes.
const HINT_MIN: usize = 256;
const HINT_MAX: usize = 1 << 20;
/// Bytes of capacity one turn's chunks get by the hint, in all (16 busy conversations
/// of large messages in one turn are not grown by copies).
const PREALLOC_MAX: usize = 4 * HINT_MAX;

impl HistBuf {
    /// The buffer of a shard whose store queue holds at most `store_queue_bytes`.
    pub fn new(store_queue_bytes: usize) -> Self {
        HistBuf {
            prealloc_max: PREALLOC_MAX.min(store_queue_bytes / 16),
            ..Default::default()
        }
    }

    /// Whether messages wait for the flusher.
    pub fn pending(&self) -> bool {
        !self.chunks.is_empty()
    }

    /// `scratch` now names another conversation.
    fn renamed(&mut self) {
        self.last_is_scratch = false;
    }

    fn push(&mut self, from_user: &[u8], payload: &Bytes, msg_id: u64, ts_us: u64) {
        let i = if self.last_is_scratch {
            self.last
        } else {
            match self.chunks.get(self.last) {
                Some(c) if c.conv == self.scratch => self.last,
                _ => match self.index.get(&self.scratch) {
                    Some(&i) => i,
                    None => {
                        let i = self.chunks.len();
                        let cap = self
                            .hint
                            .min(HINT_MAX)
                            .min(self.prealloc_max.saturating_sub(self.prealloc))
                            .max(HINT_MIN);
                        self.prealloc += cap;
                        self.chunks.push(HistChunk {
                            conv: self.scratch.clone(),
                            data: Vec::with_capacity(cap),
                            ..Default::default()
                        });
                        self.earlier.push(0);
                        self.index.insert(self.scratch.clone(), i);
                        i
                    }
                },
            }
        };
        let i = self.room_for(i, HistChunk::record_len(from_user, payload));
        self.last = i;
        self.last_is_scratch = true;
        if let Some(c) = self.chunks.get_mut(i) {
            c.push_shared(from_user, msg_id, ts_us, payload);
            if payload.len() > HistChunk::INLINE_MAX {
                self.bytes += payload.len() + std::mem::size_of::<Bytes>();
            }
        }
    }

    /// The chunk a record of `need` bytes goes to: chunk `i`, or, when it is full, a
    /// new chunk of the same conversation after it, twice its size (up to
    /// [`HINT_MAX`]). A full chunk is never grown: growing copied everything it held
    /// (a realloc per doubling, 2% of the router's CPU at 256 pairs × 64 B). The store
    /// takes a conversation's chunks in order, as one after the other.
    #[inline(always)]
    fn room_for(&mut self, i: usize, need: usize) -> usize {
        match self.chunks.get(i) {
            Some(c) if c.data.capacity() - c.data.len() < need && !c.data.is_empty() => {
                self.next_chunk(i, need)
            }
            _ => i,
        }
    }

    /// [`HistBuf::room_for`] when chunk `i` is full: the new chunk's index.
    #[cold]
    #[inline(never)]
    fn next_chunk(&mut self, i: usize, need: usize) -> usize {
        let Some(c) = self.chunks.get(i) else {
            return i;
        };
        let cap = c
            .data
            .capacity()
            .saturating_mul(2)
            .clamp(HINT_MIN, HINT_MAX)
            .max(need);
        let conv = c.conv.clone();
        let before = self.earlier.get(i).copied().unwrap_or(0) + c.data.len();
        let j = self.chunks.len();
        self.earlier.push(before);
        self.chunks.push(HistChunk {
            conv,
            data: Vec::with_capacity(cap),
            ..Default::default()
        });
        if let Some(slot) = self.index.get_mut(&self.scratch) {
            *slot = j;
        }
        j
    }

    /// The most bytes one conversation has in this turn's chunks.
    fn busiest(&self) -> usize {
        self.chunks
            .iter()
            .zip(&self.earlier)
            .map(|(c, before)| before + c.data.len())
            .max()
            .unwrap_or(0)
    }

    /// What the turn's chunks hold: their records' capacity, their conversation ids and
    /// themselves, and the payloads they share.
    fn held_bytes(&self) -> usize {
        let chunks: usize = self
            .chunks
            .iter()
            .map(|c| c.data.capacity() + c.conv.len() + std::mem::size_of::<HistChunk>())
            .sum();
        chunks + self.bytes
    }
}

impl Shard {
    pub(crate) fn history_on(&self) -> bool {
        self.cfg.history_per_conversation > 0 && self.store.is_some()
    }

    /// Keeps a direct message in the history of the conversation `from_user`–`to_user`.
    pub(crate) fn history_dm(
        &mut self,
        from_user: &[u8],
        to_user: &[u8],
        payload: &Bytes,
        msg_id: u64,
        ts_us: u64,
    ) {
        if !self.history_on() {
            return;
        }
        let h = &mut self.hist;
        if h.scratch.first() != Some(&b'd')
            || !name_eq(&h.last_pair.0, from_user)
            || !name_eq(&h.last_pair.1, to_user)
        {
            dm_conv_into(&mut h.scratch, from_user, to_user);
            h.renamed();
            h.last_pair.0.clear();
            h.last_pair.0.extend_from_slice(from_user);
            h.last_pair.1.clear();
            h.last_pair.1.extend_from_slice(to_user);
        }
        self.history_push(from_user, payload, msg_id, ts_us);
    }

    /// Keeps a room message in the room's history.
    pub(crate) fn history_room(
        &mut self,
        room: &[u8],
        from_user: &[u8],
        payload: &Bytes,
        msg_id: u64,
        ts_us: u64,
    ) {
        if !self.history_on() {
            return;
        }
        room_conv_into(&mut self.hist.scratch, room);
        self.hist.renamed();
        self.history_push(from_user, payload, msg_id, ts_us);
    }

    fn history_push(&mut self, from_user: &[u8], payload: &Bytes, msg_id: u64, ts_us: u64) {
        let was_empty = !self.hist.pending();
        self.hist.push(from_user, payload, msg_id, ts_us);
        if self.journaled() {
            self.flush_history();
        } else if was_empty {
            if let Some(w) = self.flusher.take() {
                w.wake();
            }
        }
    }

    /// Keeps `key`'s user's read mark in a conversation (MarkRead: the direct one with
    /// `to_user`, or `room`), for the unread counts of ListConversations. The store finds
    /// the message in the history kept (nothing if it is not there).
    pub(crate) fn history_mark(&mut self, key: SessionKey, to_user: &str, room: &str, msg_id: u64) {
        if !self.history_on() {
            return;
        }
        let Some(s) = self.sessions.get(key) else {
            return;
        };
        let user = String::from_utf8_lossy(&s.user).into_owned();
        let peer = (!to_user.is_empty()).then(|| to_user.to_owned());
        let room = (!room.is_empty()).then(|| room.to_owned());
        self.lookup_req(
            key,
            move |s, cb| s.history_mark(&user, peer, room, msg_id, cb),
            |_, r| {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "read mark not kept");
                }
            },
        );
    }

    /// Hands this turn's messages to the store (one request). Called by the flusher.
    pub(crate) fn flush_history(&mut self) {
        if !self.hist.pending() {
            return;
        }
        let bytes = self.hist.held_bytes();
        self.hist.bytes = 0;
        self.hist.hint = self.hist.busiest();
        let chunks = std::mem::take(&mut self.hist.chunks);
        self.hist.earlier.clear();
        self.hist.index.clear();
        self.hist.last = 0;
        self.hist.last_is_scratch = false;
        self.hist.prealloc = 0;
        self.store_req_sized(
            bytes,
            |s, cb| s.history_append(chunks, cb),
            |_, r| {
                if let Err(e) = r {
                    tracing::warn!(error = %e, "history append failed");
                }
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::history::records;

    fn push_dm(h: &mut HistBuf, from: &[u8], to: &[u8], id: u64, len: usize) {
        dm_conv_into(&mut h.scratch, from, to);
        h.renamed();
        h.push(from, &Bytes::from(vec![id as u8; len]), id, 1_000 + id);
    }

    #[test]
    fn a_full_chunk_is_followed_by_a_bigger_one_of_its_conversation_never_grown() {
        let mut h = HistBuf::default();
        let mut caps: Vec<usize> = Vec::new();
        for id in 1..=5_000u64 {
            push_dm(&mut h, b"alice", b"bob", id, 40);
            if id % 1_000 == 0 {
                // Another conversation in between: its own chunk.
                push_dm(&mut h, b"carol", b"dave", 100_000 + id, 40);
            }
            for (i, c) in h.chunks.iter().enumerate() {
                match caps.get(i) {
                    Some(&cap) => assert_eq!(c.data.capacity(), cap, "chunk {i} was grown"),
                    None => caps.push(c.data.capacity()),
                }
            }
        }
        let conv = |from: &[u8], to: &[u8]| {
            let mut c = Vec::new();
            dm_conv_into(&mut c, from, to);
            c
        };
        let ids = |conv: &[u8]| -> Vec<u64> {
            h.chunks
                .iter()
                .filter(|c| c.conv == conv)
                .flat_map(|c| records(&c.data).map(|r| r.1).collect::<Vec<_>>())
                .collect()
        };
        // Every message once, in order, in the conversation's chunks.
        assert_eq!(
            ids(&conv(b"alice", b"bob")),
            (1..=5_000).collect::<Vec<_>>()
        );
        let other: Vec<u64> = (1..=5).map(|k| 100_000 + k * 1_000).collect();
        assert_eq!(ids(&conv(b"carol", b"dave")), other);
        let mine: Vec<usize> = h
            .chunks
            .iter()
            .filter(|c| c.conv == conv(b"alice", b"bob"))
            .map(|c| c.data.capacity())
            .collect();
        assert!(mine.len() > 2, "{mine:?}");
        // Each next chunk twice the one before (a record's size at least), up to the cap.
        for w in mine.windows(2) {
            assert_eq!(w[1], (w[0] * 2).clamp(HINT_MIN, HINT_MAX), "{mine:?}");
        }
        // What the flush counts covers every chunk's capacity.
        let total: usize = h.chunks.iter().map(|c| c.data.capacity()).sum();
        assert!(h.held_bytes() >= total);
    }

    #[test]
    fn the_hint_is_a_conversations_total_over_its_chunks() {
        let mut h = HistBuf::default();
        for id in 1..=300u64 {
            push_dm(&mut h, b"alice", b"bob", id, 40);
        }
        push_dm(&mut h, b"carol", b"dave", 1_000, 40);
        let alice: usize = h
            .chunks
            .iter()
            .filter(|c| c.conv != h.chunks[h.last].conv)
            .map(|c| c.data.len())
            .sum();
        assert!(h.chunks.len() > 3, "{}", h.chunks.len());
        assert_eq!(h.busiest(), alice);
    }

    #[test]
    fn what_the_hint_reserves_in_a_turn_is_a_sixteenth_of_the_store_queue_at_most() {
        let held = |store_queue: usize| {
            let mut h = HistBuf::new(store_queue);
            h.hint = HINT_MAX;
            for k in 0..20u64 {
                let peer = format!("peer-{k}");
                push_dm(&mut h, b"alice", peer.as_bytes(), k + 1, 10);
            }
            h.held_bytes()
        };
        // A 256 KiB queue: 16 KiB by the hint, then the smallest chunks.
        let small = held(256 << 10);
        assert!(small <= (16 << 10) + 20 * (HINT_MIN + 200), "{small}");
        // The default queue (64 MiB): up to PREALLOC_MAX.
        let big = held(64 << 20);
        assert!(big >= PREALLOC_MAX, "{big}");
    }

    #[test]
    fn a_shared_payload_counts_beside_the_chunks() {
        let mut h = HistBuf::default();
        push_dm(&mut h, b"alice", b"bob", 1, HistChunk::INLINE_MAX + 1);
        let c = &h.chunks[0];
        assert_eq!(c.shared.len(), 1);
        assert!(
            h.held_bytes() > c.data.capacity() + HistChunk::INLINE_MAX,
            "{}",
            h.held_bytes()
        );
    }
}
