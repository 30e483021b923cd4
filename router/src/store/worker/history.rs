//! The storage thread's side of conversation history (layout: `store::history`).

use rustc_hash::FxHashMap;

use super::super::history::{
    chunk_key, chunk_prefix, chunk_seq, chunk_value, decode_u64, parse_chunk, parse_conv, records,
    user_key, user_prefix, ConvName, ConvSummary, HistChunk, HistMsg, HistPage, HistQuery,
    HistoryOptions,
};
use super::{member_key, now_us, Ks, Op, Worker, CACHE_MAX};
use crate::store::{StoreError, StoreResult};

/// Chunks appended to a conversation between two age trims (with a max age).
const AGE_TRIM_EVERY: u32 = 64;

/// Most conversation entries one ListConversations looks at (a bound on the work of one
/// request, whatever the user's number of conversations).
pub(crate) const CONV_SCAN_MAX: usize = 10_000;

/// A conversation's position, cached (read from disk on first use).
#[derive(Clone, Copy, Debug)]
struct ConvState {
    /// Seq of the next message.
    next_seq: u64,
    /// First seq of the oldest chunk on disk (`next_seq` when there is none).
    oldest: u64,
    /// Chunks appended since the last trim.
    since_trim: u32,
    /// The participants' entries of a direct conversation are known to exist.
    indexed: bool,
}

/// History state of the storage thread.
#[derive(Default)]
pub(crate) struct HistState {
    pub(crate) opts: HistoryOptions,
    convs: FxHashMap<Vec<u8>, ConvState>,
    /// Users' conversation entries to write at the next commit (key → last sent seq; 0:
    /// create if missing). Merged here so one batch never writes a key twice.
    pending: FxHashMap<Vec<u8>, u64>,
    /// (conversation, msg_id) → seq of the oldest message of recently answered pages:
    /// the `before` of the next page back, found without scanning for it.
    cursors: FxHashMap<(Vec<u8>, u64), u64>,
}

/// Most entries in [`HistState::cursors`] (then it is emptied).
const CURSORS_MAX: usize = 65_536;

impl HistState {
    pub(crate) fn new(opts: HistoryOptions) -> Self {
        HistState {
            opts,
            ..Default::default()
        }
    }
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Io(format!("corrupt history {what}"))
}

fn to_msg(r: (&[u8], u64, u64, &[u8])) -> HistMsg {
    HistMsg {
        from_user: String::from_utf8_lossy(r.0).into_owned(),
        payload: bytes::Bytes::copy_from_slice(r.3),
        msg_id: r.1,
        ts_us: r.2,
    }
}

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
        let mut oldest = None;
        if let Some(g) = self.dbs.history.prefix(&prefix).next_back() {
            let (k, v) = g.into_inner()?;
            let seq = chunk_seq(&prefix, &k).ok_or_else(|| corrupt("key"))?;
            let (count, _, _) = parse_chunk(&v).ok_or_else(|| corrupt("chunk"))?;
            next_seq = seq + u64::from(count);
        }
        if let Some(g) = self.dbs.history.prefix(&prefix).next() {
            let k = g.key()?;
            oldest = Some(chunk_seq(&prefix, &k).ok_or_else(|| corrupt("key"))?);
        }
        let st = ConvState {
            next_seq,
            oldest: oldest.unwrap_or(next_seq),
            since_trim: 0,
            indexed: false,
        };
        self.hist.convs.insert(conv.to_vec(), st);
        Ok(st)
    }

    /// Writes the merged conversation entries (called by `commit`, before the batch).
    pub(crate) fn hist_flush_entries(&mut self) {
        for (k, seq) in self.hist.pending.drain() {
            if seq == 0 {
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
    }

    fn note_entry(&mut self, user: &[u8], conv: &[u8], seq: u64) {
        let e = self.hist.pending.entry(user_key(user, conv)).or_insert(0);
        *e = (*e).max(seq);
    }

    /// Appends chunks (one request per shard per loop turn).
    pub(crate) fn hist_append(&mut self, chunks: Vec<HistChunk>) -> StoreResult<()> {
        if self.hist.opts.per_conversation == 0 {
            return Ok(());
        }
        for c in chunks {
            if c.count == 0 {
                continue;
            }
            let Some(name) = parse_conv(&c.conv) else {
                return Err(StoreError::Invalid("bad conversation id".into()));
            };
            let mut st = self.conv_state(&c.conv)?;
            if let (false, ConvName::Direct(a, b)) = (st.indexed, &name) {
                // A message to a user without an account (refused NOT_FOUND) or to one
                // deleted meanwhile makes no conversation. Checked once per conversation
                // and process (the check is cached; deleting an account drops the state).
                let (a, b) = (String::from_utf8_lossy(a), String::from_utf8_lossy(b));
                let (a, b) = (a.into_owned(), b.into_owned());
                if !self.account_exists(&a)? || !self.account_exists(&b)? {
                    continue;
                }
            }
            let first = st.next_seq;
            // The last message each sender sent in this chunk.
            let mut senders: Vec<(&[u8], u64)> = Vec::new();
            for (i, (from, ..)) in records(c.records()).enumerate() {
                let seq = first + i as u64;
                match senders.iter_mut().find(|(f, _)| *f == from) {
                    Some(s) => s.1 = seq,
                    None => senders.push((from, seq)),
                }
            }
            let senders: Vec<(Vec<u8>, u64)> =
                senders.into_iter().map(|(f, s)| (f.to_vec(), s)).collect();
            for (from, seq) in &senders {
                self.note_entry(from, &c.conv, *seq);
            }
            if let (false, ConvName::Direct(a, b)) = (st.indexed, &name) {
                let (a, b) = (a.to_vec(), b.to_vec());
                self.note_entry(&a, &c.conv, 0);
                self.note_entry(&b, &c.conv, 0);
                st.indexed = true;
            }
            st.next_seq = first + u64::from(c.count);
            st.since_trim += 1;
            let key = chunk_key(&c.conv, first);
            let conv = c.conv.clone();
            self.ops.push(Op::Put(Ks::History, key, chunk_value(c)));
            let limit = self.hist.opts.per_conversation;
            let slack = (limit / 4).max(256);
            let over = st.next_seq - st.oldest > limit.saturating_add(slack);
            let aged = self.hist.opts.max_age.is_some() && st.since_trim >= AGE_TRIM_EVERY;
            self.hist.convs.insert(conv.clone(), st);
            if over || aged {
                self.hist_trim(&conv)?;
            }
        }
        Ok(())
    }

    /// Deletes the chunks of `conv` that no query may show any more.
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
            let (count, last_ts, _) = parse_chunk(&v).ok_or_else(|| corrupt("chunk"))?;
            if seq + u64::from(count) <= keep_from || last_ts < cutoff {
                self.ops.push(Op::Del(Ks::History, k.to_vec()));
            } else {
                oldest = seq;
                break;
            }
        }
        st.oldest = oldest;
        st.since_trim = 0;
        self.hist.convs.insert(conv.to_vec(), st);
        Ok(())
    }

    /// A page of a conversation, oldest first.
    pub(crate) fn hist_query(&mut self, q: &HistQuery) -> StoreResult<HistPage> {
        self.commit()?;
        let conv = match (&q.peer, &q.room) {
            (Some(p), None) => super::super::history::dm_conv(q.user.as_bytes(), p.as_bytes()),
            (None, Some(r)) => {
                if !self.dbs.rooms.contains_key(member_key(&q.user, r))? {
                    return Ok(HistPage::Forbidden);
                }
                super::super::history::room_conv(r.as_bytes())
            }
            _ => return Err(StoreError::Invalid("set user or room, not both".into())),
        };
        let st = self.conv_state(&conv)?;
        let from = self.visible_from(&st);
        let cutoff = self.age_cutoff();
        let prefix = chunk_prefix(&conv);
        let mut out = Vec::new();
        // The seq of `before`, when a page that ended at it was answered recently: the
        // scan then starts at its chunk instead of looking for it from the newest.
        let start = match q.before {
            0 => None,
            b => self.hist.cursors.get(&(conv.clone(), b)).copied(),
        };
        let mut found = q.before == 0 || start.is_some();
        let upper = chunk_key(&conv, start.unwrap_or(u64::MAX));
        let mut oldest_seq = 0;
        'chunks: for g in self.dbs.history.range(prefix.clone()..=upper).rev() {
            if out.len() >= q.limit {
                break;
            }
            let (k, v) = g.into_inner()?;
            let seq = chunk_seq(&prefix, &k).ok_or_else(|| corrupt("key"))?;
            let (count, last_ts, data) = parse_chunk(&v).ok_or_else(|| corrupt("chunk"))?;
            if seq + u64::from(count) <= from || last_ts < cutoff {
                break;
            }
            let recs: Vec<_> = records(data).collect();
            for (i, r) in recs.iter().enumerate().rev() {
                let s = seq + i as u64;
                if start.is_some_and(|start| s >= start) {
                    continue;
                }
                if s < from || r.2 < cutoff {
                    break 'chunks;
                }
                if !found {
                    found = r.1 == q.before;
                    continue;
                }
                oldest_seq = s;
                out.push(to_msg(*r));
                if out.len() >= q.limit {
                    break 'chunks;
                }
            }
        }
        if !found {
            return Ok(HistPage::BeforeNotFound);
        }
        if let Some(m) = out.last() {
            if self.hist.cursors.len() >= CURSORS_MAX {
                self.hist.cursors.clear();
            }
            self.hist.cursors.insert((conv, m.msg_id), oldest_seq);
        }
        out.reverse();
        Ok(HistPage::Messages(out))
    }

    /// The newest message of a conversation, if one is visible.
    fn hist_last(&mut self, conv: &[u8]) -> StoreResult<Option<(HistMsg, ConvState)>> {
        let st = self.conv_state(conv)?;
        if st.next_seq <= self.visible_from(&st) {
            return Ok(None);
        }
        let cutoff = self.age_cutoff();
        let prefix = chunk_prefix(conv);
        let Some(g) = self.dbs.history.prefix(&prefix).next_back() else {
            return Ok(None);
        };
        let v = g.value()?;
        let (_, last_ts, data) = parse_chunk(&v).ok_or_else(|| corrupt("chunk"))?;
        if last_ts < cutoff {
            return Ok(None);
        }
        Ok(records(data).last().map(|r| (to_msg(r), st)))
    }

    /// `user`'s conversations, newest last message first.
    pub(crate) fn hist_conversations(
        &mut self,
        user: &str,
        limit: usize,
        before_ts: u64,
    ) -> StoreResult<Vec<ConvSummary>> {
        self.commit()?;
        // conversation id → last sent seq.
        let mut convs: Vec<(Vec<u8>, u64)> = Vec::new();
        let prefix = user_prefix(user.as_bytes());
        for g in self.dbs.history.prefix(&prefix).take(CONV_SCAN_MAX) {
            let (k, v) = g.into_inner()?;
            convs.push((k[prefix.len()..].to_vec(), decode_u64(&v)));
        }
        let rooms = self.rooms_of(user)?;
        let mut out = Vec::new();
        for room in rooms.iter().take(CONV_SCAN_MAX) {
            let conv = super::super::history::room_conv(room.as_bytes());
            if !convs.iter().any(|(c, _)| *c == conv) {
                convs.push((conv, 0));
            }
        }
        for (conv, sent) in convs {
            let (peer, room) = match parse_conv(&conv) {
                Some(ConvName::Direct(a, b)) => {
                    let peer = if a == user.as_bytes() { b } else { a };
                    (Some(String::from_utf8_lossy(peer).into_owned()), None)
                }
                Some(ConvName::Room(r)) => {
                    let r = String::from_utf8_lossy(r).into_owned();
                    // Left the room: its history is no longer the user's.
                    if !rooms.contains(&r) {
                        continue;
                    }
                    (None, Some(r))
                }
                None => continue,
            };
            let Some((last, st)) = self.hist_last(&conv)? else {
                continue;
            };
            if before_ts != 0 && last.ts_us >= before_ts {
                continue;
            }
            let seen = sent.max(self.visible_from(&st) - 1);
            let unread = (st.next_seq - 1).saturating_sub(seen);
            out.push(ConvSummary {
                peer,
                room,
                last,
                unread,
            });
        }
        out.sort_by_key(|c| std::cmp::Reverse(c.last.ts_us));
        out.truncate(limit);
        Ok(out)
    }

    /// Removes `user`'s direct conversations (both sides' entries and their messages)
    /// and its own conversation entries. Call with every write committed.
    pub(crate) fn hist_delete_user(&mut self, user: &str) -> StoreResult<()> {
        let prefix = user_prefix(user.as_bytes());
        // Seqs of deleted conversations start again at 1.
        self.hist.cursors.clear();
        let mut entries = Vec::new();
        for g in self.dbs.history.prefix(&prefix) {
            entries.push(g.key()?.to_vec());
        }
        for k in entries {
            let conv = k[prefix.len()..].to_vec();
            if let Some(ConvName::Direct(a, b)) = parse_conv(&conv) {
                let peer = if a == user.as_bytes() { b } else { a };
                self.ops.push(Op::Del(Ks::History, user_key(peer, &conv)));
                for g in self.dbs.history.prefix(chunk_prefix(&conv)) {
                    self.ops.push(Op::Del(Ks::History, g.key()?.to_vec()));
                }
                self.hist.convs.remove(&conv);
            }
            self.ops.push(Op::Del(Ks::History, k));
        }
        Ok(())
    }

    /// Empties the conversation cache past [`CACHE_MAX`] (every write committed).
    pub(crate) fn hist_trim_cache(&mut self) {
        if self.hist.convs.len() > CACHE_MAX && self.hist.pending.is_empty() {
            self.hist.convs = FxHashMap::default();
        }
    }
}
