//! History appends of this shard: every message accepted here for a direct conversation
//! (on the recipient's home shard) or a room (on the room's home shard, members only) is
//! copied into a per-conversation chunk; the flusher hands the turn's chunks to the store
//! as one request (`store::history`). In `sync` durability the chunk goes out at once,
//! before the message's own journal request, so it is in the same group commit or an
//! earlier one: never behind a SendResult OK. Nothing at all when
//! `--history-per-conversation` is 0.

use rustc_hash::FxHashMap;

use super::Shard;
use crate::store::history::{dm_conv_into, room_conv_into};
use crate::store::HistChunk;

/// Bytes an appended message counts for besides its payload and names.
const RECORD_OVERHEAD: usize = 24;

/// A chunk holds at most this many messages ...
const CHUNK_MAX_MSGS: u32 = 128;
/// ... or about this many bytes; past either the conversation starts a new chunk (a
/// page then decodes at most a chunk or two beyond what it returns).
const CHUNK_MAX_BYTES: usize = 32 * 1024;

/// The chunks of the current loop turn.
#[derive(Default)]
pub struct HistBuf {
    chunks: Vec<HistChunk>,
    /// Conversation id → index in `chunks`.
    index: FxHashMap<Vec<u8>, usize>,
    /// The chunk the previous message went to (consecutive messages of one
    /// conversation skip the map).
    last: usize,
    scratch: Vec<u8>,
    /// The names of the previous direct message (`scratch` is their conversation id):
    /// the next one between the same two users skips building the id.
    last_pair: (Vec<u8>, Vec<u8>),
    bytes: usize,
}

impl HistBuf {
    /// Whether chunks wait for the flusher.
    pub fn pending(&self) -> bool {
        !self.chunks.is_empty()
    }

    fn push(&mut self, from_user: &[u8], msg_id: u64, ts_us: u64, payload: &[u8]) {
        let found = match self.chunks.get(self.last) {
            Some(c) if c.conv == self.scratch => Some(self.last),
            _ => self.index.get(&self.scratch).copied(),
        };
        let full = |c: &HistChunk| c.count >= CHUNK_MAX_MSGS || c.data.len() >= CHUNK_MAX_BYTES;
        let i = match found {
            Some(i) if !full(&self.chunks[i]) => i,
            _ => {
                let i = self.chunks.len();
                self.chunks.push(HistChunk {
                    conv: self.scratch.clone(),
                    ..Default::default()
                });
                self.index.insert(self.scratch.clone(), i);
                i
            }
        };
        self.last = i;
        self.bytes += RECORD_OVERHEAD + from_user.len() + payload.len();
        self.chunks[i].push(from_user, msg_id, ts_us, payload);
    }
}

impl Shard {
    fn history_on(&self) -> bool {
        self.cfg.history_per_conversation > 0 && self.store.is_some()
    }

    /// Keeps a direct message in the history of the conversation `from_user`–`to_user`.
    pub(crate) fn history_dm(
        &mut self,
        from_user: &[u8],
        to_user: &[u8],
        payload: &[u8],
        msg_id: u64,
        ts_us: u64,
    ) {
        if !self.history_on() {
            return;
        }
        let h = &mut self.hist;
        if h.scratch.first() != Some(&b'd')
            || h.last_pair.0 != from_user
            || h.last_pair.1 != to_user
        {
            dm_conv_into(&mut h.scratch, from_user, to_user);
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
        payload: &[u8],
        msg_id: u64,
        ts_us: u64,
    ) {
        if !self.history_on() {
            return;
        }
        room_conv_into(&mut self.hist.scratch, room);
        self.history_push(from_user, payload, msg_id, ts_us);
    }

    fn history_push(&mut self, from_user: &[u8], payload: &[u8], msg_id: u64, ts_us: u64) {
        let was_empty = !self.hist.pending();
        self.hist.push(from_user, msg_id, ts_us, payload);
        if self.journaled() {
            self.flush_history();
        } else if was_empty {
            if let Some(w) = self.flusher.take() {
                w.wake();
            }
        }
    }

    /// Hands this turn's chunks to the store (one request). Called by the flusher.
    pub(crate) fn flush_history(&mut self) {
        if !self.hist.pending() {
            return;
        }
        let chunks = std::mem::take(&mut self.hist.chunks);
        let bytes = std::mem::take(&mut self.hist.bytes);
        self.hist.index.clear();
        self.hist.last = 0;
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
