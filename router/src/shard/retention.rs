//! What a session keeps, in one vocabulary:
//!
//! - **retained**: delivered and not acked yet ([`Retained`], one `RetainedEntry`
//!   each, with a `RetainedPayload`). Given back to the offline queue if the session
//!   ends first.
//! - **deferred**: live messages that arrived while the session's login backlog was
//!   being delivered (memory mode); they are delivered right after it
//!   (`Session::deferred`, as [`OwnedMsg`]s).
//!
//! [`Outgoing`] is a message on its way into sessions, borrowed from wherever it is;
//! [`OwnedMsg`] is one that owns (shares) its names and payload.

use std::collections::VecDeque;
use std::mem::MaybeUninit;
use std::rc::Rc;

use bytes::Bytes;
use ringrouter_proto::fast::copy_short;

use crate::outbuf::{FanMsg, Unpinning};
use crate::store::StoredMsg;

/// The room of a direct message (none).
pub(crate) static NO_ROOM: Bytes = Bytes::new();

/// A message that owns its names and payload (shared, not copied): a deferred message,
/// or one on its way to the store (sync durability).
#[derive(Debug, Clone, Default)]
pub struct OwnedMsg {
    /// Authenticated sender.
    pub from_user: Bytes,
    /// Room, empty for a direct message.
    pub to_room: Bytes,
    /// Payload.
    pub payload: Bytes,
    /// Message id.
    pub msg_id: u64,
    /// Router clock at acceptance.
    pub ts_us: u64,
}

impl OwnedMsg {
    /// The message with copies of its small payload and names
    /// ([`crate::outbuf::unpinned`]): kept while the store answers, a slice of the
    /// sender's read buffer would keep it whole (up to 64 KiB for a 1-byte message).
    pub(crate) fn unpinned(self) -> OwnedMsg {
        Self::unpinned_of(
            &self.from_user,
            &self.to_room,
            &self.payload,
            self.msg_id,
            self.ts_us,
        )
    }

    /// [`OwnedMsg::unpinned`] made from borrowed fields (copied, not cloned first: three
    /// reference counts fewer).
    pub(crate) fn unpinned_of(
        from_user: &Bytes,
        to_room: &Bytes,
        payload: &Bytes,
        msg_id: u64,
        ts_us: u64,
    ) -> OwnedMsg {
        use crate::outbuf::unpinned;
        OwnedMsg {
            from_user: unpinned(from_user),
            to_room: unpinned(to_room),
            payload: unpinned(payload),
            msg_id,
            ts_us,
        }
    }

    pub(crate) fn to_stored(&self) -> StoredMsg {
        stored_msg(
            &self.from_user,
            &self.to_room,
            self.payload.clone(),
            self.ts_us,
            self.msg_id,
        )
    }
}

/// A message as a store record (an offline queue's).
fn stored_msg(
    from_user: &[u8],
    to_room: &[u8],
    payload: Bytes,
    ts_us: u64,
    msg_id: u64,
) -> StoredMsg {
    StoredMsg {
        from_user: String::from_utf8_lossy(from_user).into_owned(),
        to_room: String::from_utf8_lossy(to_room).into_owned(),
        payload,
        server_ts_us: ts_us,
        msg_id,
        room_event: 0,
        contact_event: 0,
    }
}

/// One retained message of a session (delivered, not acked yet).
#[derive(Debug)]
struct RetainedEntry {
    /// The session seq it was delivered with.
    seq: u64,
    /// Its seq in the user's offline queue when it is stored there (0: live only; its
    /// content is kept here, to be stored if the session ends before the ack).
    store_seq: u64,
    /// Payload (empty when stored).
    payload: RetainedPayload,
    msg_id: u64,
    ts_us: u64,
    /// Absolute index of its (sender, room) in [`Retained::names`].
    name: u64,
}

/// What a session delivered and the client has not acked yet, in seq order.
///
/// Per direct message this costs one queue entry and one payload reference (small
/// payloads are copied into the entry): the sender and room names live once per run of
/// messages from the same sender in `names`, pinned there, so a delivery recognises the
/// previous sender by pointer (no byte comparison, no reference count on a name another
/// core owns). A room message costs 16 bytes: its seq and a reference to the shard's one
/// [`FanMsg`] for it.
///
/// `repr(C)`: what a delivery reads and writes (`fan`, `bytes`, the queue's length and
/// tail) comes first, in the two cache lines the fan-out prefetch asks for (see
/// `Session`).
#[derive(Debug, Default)]
#[repr(C)]
pub struct Retained {
    fan: VecDeque<(u64, Rc<FanMsg>)>,
    /// Payload bytes kept (what `max_unacked_bytes_per_session` bounds); entries whose
    /// payload is in the store count nothing.
    bytes: usize,
    q: Blocks,
    names: VecDeque<(Bytes, Bytes)>,
    /// Absolute index of `names[0]`.
    names_base: u64,
    /// The entries of `q` up to this seq keep no read buffer ([`Retained::unpin`]).
    unpinned_q: u64,
    /// The same for `fan`.
    unpinned_fan: u64,
}

/// How long an unacked message may keep the read buffer its payload is a slice of.
/// A payload over [`RETAIN_INLINE`] bytes is kept by reference, and the reference keeps
/// the sender's whole read chunk (up to 64 KiB) alive while the bounds count only the
/// payload: a client that padded each chunk with payloads nobody keeps (sends to a
/// missing room or user, or to a session that acks at once) and sent one 100-byte message
/// a chunk to a session that never acks held ~91 KiB a message, 1.8 GB at 20 000
/// unacked, past `--max-memory` (a hostile review). Past this age, found by the shard's
/// ticker, the payload is copied out (once); an ack under it (any client keeping up)
/// never costs the copy.
pub const PIN_MAX_US: u64 = 200_000;

/// A message accepted at `ts_us` is not yet to be unpinned by a sweep that unpins those
/// accepted before `before_us` (now less [`PIN_MAX_US`]). Stamps are the wall clock's:
/// one in the future (the clock stepped back since) counts as old, or unpinning would
/// stop behind it until the clock caught up.
fn too_young(ts_us: u64, before_us: u64) -> bool {
    ts_us >= before_us && ts_us - before_us <= PIN_MAX_US
}

/// Retained entries in blocks: the queue grows a block at a time, never by copying what
/// it holds, and each block goes as soon as its entries are acked. A `VecDeque` of them
/// doubled (a session with 500 000 unacked copied 56 MB at once, on the shard's thread,
/// and kept twice that allocated). The block being filled is kept apart, so a push costs
/// what a `VecDeque`'s does.
#[derive(Debug, Default)]
#[repr(C)]
struct Blocks {
    /// Entries in `full`.
    in_full: usize,
    /// The block being filled (the newest entries).
    tail: VecDeque<RetainedEntry>,
    /// Full blocks, oldest first (their entries come before `tail`'s).
    full: VecDeque<VecDeque<RetainedEntry>>,
}

/// Entries in a full-size block (7 KiB). The first blocks of a queue are smaller (4, 4, 8,
/// 16, 32): a session with a few unacked messages holds little.
const BLOCK: usize = 64;

impl Blocks {
    fn len(&self) -> usize {
        self.in_full + self.tail.len()
    }

    fn is_empty(&self) -> bool {
        self.in_full == 0 && self.tail.is_empty()
    }

    /// Whether it keeps allocations (for `Retained::release`).
    fn holds_memory(&self) -> bool {
        self.full.capacity() != 0 || self.tail.capacity() != 0
    }

    /// Appends `e`; returns it in its place (an inline payload is copied there, not
    /// into a temporary that is then moved).
    #[inline(always)]
    fn push_back(&mut self, e: RetainedEntry) -> Option<&mut RetainedEntry> {
        if self.tail.len() == self.tail.capacity() {
            self.new_tail();
        }
        self.tail.push_back(e);
        self.tail.back_mut()
    }

    #[cold]
    fn new_tail(&mut self) {
        let cap = self.len().next_power_of_two().clamp(4, BLOCK);
        let full = std::mem::replace(&mut self.tail, VecDeque::with_capacity(cap));
        if !full.is_empty() {
            self.in_full += full.len();
            self.full.push_back(full);
        }
    }

    fn front(&self) -> Option<&RetainedEntry> {
        match self.full.front() {
            Some(b) => b.front(),
            None => self.tail.front(),
        }
    }

    #[inline(always)]
    fn pop_front(&mut self) -> Option<RetainedEntry> {
        let Some(b) = self.full.front_mut() else {
            return self.tail.pop_front();
        };
        let e = b.pop_front();
        self.in_full -= 1;
        if b.is_empty() {
            self.full.pop_front();
        }
        e
    }

    /// Drops the front entry (an ack: nothing is moved out).
    #[inline(always)]
    fn drop_front(&mut self) {
        match self.full.front_mut() {
            Some(b) => {
                b.pop_front();
                self.in_full -= 1;
                if b.is_empty() {
                    self.full.pop_front();
                }
            }
            None => {
                self.tail.pop_front();
            }
        }
    }

    /// Drops the entries up to seq `seq` (an ack); returns the highest store seq among
    /// them and their payload bytes. A block acked whole is summed in one pass over
    /// its slices and dropped at once, not popped an entry at a time.
    fn drop_through(&mut self, seq: u64) -> (u64, usize) {
        let (mut top, mut bytes) = (0, 0);
        let mut sum = |e: &RetainedEntry| {
            top = top.max(e.store_seq);
            bytes += e.payload.len();
        };
        while let Some(b) = self.full.front() {
            // Entries are in seq order: the block's last says whether all of it goes.
            if b.back().is_none_or(|e| e.seq > seq) {
                break;
            }
            let (x, y) = b.as_slices();
            x.iter().chain(y).for_each(&mut sum);
            self.in_full -= b.len();
            self.full.pop_front();
        }
        while let Some(e) = self.front() {
            if e.seq > seq {
                break;
            }
            sum(e);
            self.drop_front();
        }
        (top, bytes)
    }

    fn iter(&self) -> impl Iterator<Item = &RetainedEntry> {
        self.full.iter().flatten().chain(self.tail.iter())
    }

    /// Copies the shared payloads of the entries after seq `after` accepted before
    /// `before_us`, up to the first accepted later; returns the seq of the last entry
    /// it went past (`after` if none).
    fn unpin(&mut self, after: u64, before_us: u64, copies: &mut Unpinning) -> u64 {
        let mut last = after;
        let first = self
            .full
            .partition_point(|b| b.back().is_some_and(|e| e.seq <= after));
        let blocks = self
            .full
            .range_mut(first..)
            .chain(std::iter::once(&mut self.tail));
        for b in blocks {
            for e in b.iter_mut().filter(|e| e.seq > after) {
                if too_young(e.ts_us, before_us) {
                    return last;
                }
                if let RetainedPayload::Shared(p) = &mut e.payload {
                    *p = copies.bytes(p);
                }
                last = e.seq;
            }
        }
        last
    }

    /// Keeps the entries `keep` accepts (rare: `Retained::forget_stored`).
    fn retain(&mut self, mut keep: impl FnMut(&RetainedEntry) -> bool) {
        for b in &mut self.full {
            b.retain(&mut keep);
        }
        self.full.retain(|b| !b.is_empty());
        self.in_full = self.full.iter().map(VecDeque::len).sum();
        self.tail.retain(keep);
    }
}

/// Payloads up to this size are copied into the retained entry instead of referenced:
/// 64 bytes cost less to copy than a reference count on the sender's read buffer (which
/// would also keep that whole buffer alive until the ack).
const RETAIN_INLINE: usize = 64;

/// A retained payload: small ones copied inline, larger ones shared.
enum RetainedPayload {
    /// The first `n` bytes of the array are the payload. The rest is never read and
    /// never written: a delivery writes only the bytes it copies (zeroing the array
    /// first and moving it into the entry cost a direct message ~30 instructions).
    Inline(u8, [MaybeUninit<u8>; RETAIN_INLINE]),
    Shared(Bytes),
}

impl std::fmt::Debug for RetainedPayload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RetainedPayload::Inline(..) => f.debug_tuple("Inline").field(&self.bytes()).finish(),
            RetainedPayload::Shared(b) => f.debug_tuple("Shared").field(b).finish(),
        }
    }
}

impl RetainedPayload {
    /// No payload (the message is in the store), or none yet (`push_entry` copies a
    /// small one into the entry in its place).
    const NONE: RetainedPayload =
        RetainedPayload::Inline(0, [MaybeUninit::uninit(); RETAIN_INLINE]);

    fn len(&self) -> usize {
        match self {
            RetainedPayload::Inline(n, _) => *n as usize,
            RetainedPayload::Shared(b) => b.len(),
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            // SAFETY: an inline payload's first `n` bytes were written (`push_entry`
            // copies them before it sets `n`; `NONE` has none), and `n <= RETAIN_INLINE`.
            RetainedPayload::Inline(n, buf) => unsafe {
                std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), *n as usize)
            },
            RetainedPayload::Shared(b) => b,
        }
    }

    fn into_bytes(self) -> Bytes {
        match self {
            RetainedPayload::Inline(..) => Bytes::copy_from_slice(self.bytes()),
            RetainedPayload::Shared(b) => b,
        }
    }
}

fn same(a: &Bytes, b: &Bytes) -> bool {
    a.as_ptr() == b.as_ptr() && a.len() == b.len()
}

impl Retained {
    /// Messages kept.
    pub fn len(&self) -> usize {
        self.q.len() + self.fan.len()
    }

    /// True when nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.q.is_empty() && self.fan.is_empty()
    }

    /// Frees the queues' memory when nothing is kept (an idle session holds none).
    pub fn release(&mut self) {
        if self.q.is_empty() && self.q.holds_memory() {
            self.q = Blocks::default();
        }
        if self.fan.is_empty() && self.fan.capacity() != 0 {
            self.fan = VecDeque::new();
        }
    }

    /// Bytes of `bytes` that are room payloads, one copy shared by the shard's member
    /// sessions (a pass over them: for the memory ceiling's rare choice).
    pub fn shared_bytes(&self) -> usize {
        self.fan.iter().map(|(_, m)| m.payload.len()).sum()
    }

    /// Payload bytes kept in memory.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The memory its messages hold: each entry, each name, a direct message's shared
    /// payload, and a room message's share of its one copy (its size over the number of
    /// holders now: the members that keep it count it once between them). What a
    /// session gives back when it ends counts this while it waits for the store.
    pub fn held_bytes(&self) -> usize {
        let entries = self.q.len() * std::mem::size_of::<RetainedEntry>()
            + self.fan.len() * std::mem::size_of::<(u64, Rc<FanMsg>)>()
            + self.names.len() * 2 * std::mem::size_of::<Bytes>();
        let direct: usize = self
            .q
            .iter()
            .map(|u| match &u.payload {
                RetainedPayload::Shared(b) => b.len(),
                RetainedPayload::Inline(..) => 0,
            })
            .sum();
        let names: usize = self.names.iter().map(|(a, b)| a.len() + b.len()).sum();
        let rooms: usize = self
            .fan
            .iter()
            .map(|(_, m)| {
                let one = std::mem::size_of::<FanMsg>() + m.payload.len() + m.from_user.len();
                one / Rc::strong_count(m).max(1)
            })
            .sum();
        entries + direct + names + rooms
    }

    /// The lowest offline-queue seq among the kept messages that are in the store (0:
    /// none). O(1): stored entries come first (a login backlog, in memory mode) or are
    /// all of them (sync mode), in store order, so the front entry has it.
    pub fn lowest_store_seq(&self) -> u64 {
        self.q.front().map_or(0, |u| u.store_seq)
    }

    fn name_of(&mut self, from_user: &Bytes, to_room: &Bytes) -> u64 {
        let hit = self
            .names
            .back()
            .is_some_and(|(f, r)| same(f, from_user) && same(r, to_room));
        if !hit {
            self.names.push_back((from_user.clone(), to_room.clone()));
        }
        self.names_base + self.names.len() as u64 - 1
    }

    /// Starts loading the lines a delivery reads of it: the fields before `names`
    /// (`fan`, `bytes`, the queue's length and tail: 80 bytes, two lines at most).
    #[inline(always)]
    pub fn prefetch(&self) {
        let p = std::ptr::from_ref(self).cast::<u8>();
        crate::outbuf::prefetch(p);
        crate::outbuf::prefetch(p.wrapping_add(64));
    }

    /// Starts loading the slot the next room delivery's entry goes to (see
    /// `Shard::deliver_fan`).
    #[inline(always)]
    pub fn prefetch_fan_tail(&self) {
        // The slot after the newest entry (where the ring does not wrap, which is
        // mostly): found from `back`, not from `as_slices` (25 instructions a delivery).
        if let Some(last) = self.fan.back() {
            crate::outbuf::prefetch(std::ptr::from_ref(last).wrapping_add(1).cast::<u8>());
        }
    }

    /// Keeps a live delivery (seq `seq`) until acked. A room message's (once per member
    /// and message) is inlined where deliveries are made; the others are not.
    #[inline(always)]
    pub fn push(&mut self, seq: u64, m: &Outgoing<'_>) {
        if let (Some(fm), 0) = (m.fanned, m.store_seq) {
            self.bytes += fm.payload.len();
            self.fan.push_back((seq, fm.clone()));
            return;
        }
        self.push_entry(seq, m);
    }

    #[inline(never)]
    fn push_entry(&mut self, seq: u64, m: &Outgoing<'_>) {
        let name = self.name_of(m.from_user, m.to_room);
        let len = if m.store_seq == 0 { m.payload.len() } else { 0 };
        let payload = if len <= RETAIN_INLINE {
            // (Its bytes are copied below, in the entry's place. Built in a temporary
            // by a `memcpy` call and then moved, the entry was 7% of the shards'
            // samples at 16 pairs × 64 B; copied in place, 4%.)
            RetainedPayload::NONE
        } else {
            RetainedPayload::Shared(m.payload.clone())
        };
        self.bytes += len;
        let e = self.q.push_back(RetainedEntry {
            seq,
            store_seq: m.store_seq,
            payload,
            msg_id: m.msg_id,
            ts_us: m.ts_us,
            name,
        });
        if let Some(RetainedEntry {
            payload: RetainedPayload::Inline(n, buf),
            ..
        }) = e
        {
            // SAFETY: `len <= RETAIN_INLINE` bytes into the array, from the payload (a
            // slice that does not overlap the queue's entry).
            unsafe { copy_short(m.payload.as_ptr(), buf.as_mut_ptr().cast::<u8>(), len) };
            *n = len as u8;
        }
    }

    /// Keeps a delivery that is in the store (`store_seq`) until acked.
    pub fn push_stored(&mut self, seq: u64, store_seq: u64) {
        self.q.push_back(RetainedEntry {
            seq,
            store_seq,
            payload: RetainedPayload::NONE,
            msg_id: 0,
            ts_us: 0,
            name: u64::MAX,
        });
    }

    /// Gives the payloads of the messages accepted before `before_us` that it still
    /// holds by reference a copy of their own, so that they keep no read buffer (see
    /// [`PIN_MAX_US`]). Each message is looked at once (the queues are in seq order; a
    /// cursor in each says how far they were done); `copies` shares a payload's copy
    /// between its holders.
    pub fn unpin(&mut self, before_us: u64, copies: &mut Unpinning) {
        self.unpinned_q = self.q.unpin(self.unpinned_q, before_us, copies);
        let first = self.fan.partition_point(|(s, _)| *s <= self.unpinned_fan);
        for (seq, m) in self.fan.range_mut(first..) {
            if too_young(m.ts_us, before_us) {
                break;
            }
            *m = copies.fan(m);
            self.unpinned_fan = *seq;
        }
    }

    /// Forgets everything up to `seq` (a cumulative ack). Returns the highest store seq
    /// among them (0: none was stored), to remove from the store.
    pub fn ack(&mut self, seq: u64) -> u64 {
        let (top, freed) = self.q.drop_through(seq);
        self.bytes -= freed;
        // Room entries (in seq order): how many go, by a binary search; their bytes
        // summed over the queue's two slices, then one drain that drops them slice by
        // slice (iterating the drain cost 19 instructions an entry, its ring index
        // computed for each).
        let k = self.fan.partition_point(|(s, _)| *s <= seq);
        let (x, y) = self.fan.as_slices();
        let (x, y) = (&x[..k.min(x.len())], &y[..k.saturating_sub(x.len())]);
        let freed: usize = x.iter().chain(y).map(|(_, m)| m.payload.len()).sum();
        self.bytes -= freed;
        self.fan.drain(..k);
        // Names no kept message refers to any more (the last one stays: the next
        // message is most likely from the same sender). Entries without a name (loaded
        // from the store) only come at the front, from a login backlog, so the scan
        // stops at the first named entry.
        if self.names.len() <= 1 {
            return top;
        }
        let keep_from = self
            .q
            .iter()
            .map(|u| u.name)
            .find(|&n| n != u64::MAX)
            .unwrap_or(self.names_base + self.names.len().saturating_sub(1) as u64);
        while self.names_base < keep_from && self.names.len() > 1 {
            self.names.pop_front();
            self.names_base += 1;
        }
        top
    }

    /// Empties the queue; returns the live (not stored) messages as store records, in order.
    pub fn take_unstored(&mut self) -> Vec<StoredMsg> {
        self.pop_oldest(usize::MAX, true, usize::MAX)
    }

    /// Takes the oldest `n` messages (fewer if it holds fewer, or once their payloads
    /// reach `max_bytes`): the live (not stored) ones come back as store records, in
    /// order (those in the store already are left out, and count in `n`).
    pub fn take_oldest(&mut self, n: usize, max_bytes: usize) -> Vec<StoredMsg> {
        self.pop_oldest(n, true, max_bytes)
    }

    /// Forgets the oldest `n` messages.
    pub fn drop_oldest(&mut self, n: usize) {
        self.pop_oldest(n, false, usize::MAX);
    }

    /// Forgets the messages whose key (`key(from_user, to_room, msg_id, ts_us)`) is in
    /// `seen`: copies of messages another device of the user gave back already (see
    /// `Shard::requeue`). The keys of those it keeps go to `kept`.
    pub fn forget_seen(
        &mut self,
        key: impl Fn(&[u8], &[u8], u64, u64) -> u64,
        seen: &std::collections::HashSet<u64>,
        kept: &mut Vec<u64>,
    ) {
        let mut freed = 0usize;
        // Whether the message keyed `k`, of `len` payload bytes, stays.
        let mut stays = |k: u64, len: usize| {
            if seen.contains(&k) {
                freed += len;
                false
            } else {
                kept.push(k);
                true
            }
        };
        let names = &self.names;
        let base = self.names_base;
        self.q.retain(|u| {
            let idx = u.name.saturating_sub(base) as usize;
            let (from, room) = names
                .get(idx)
                .map_or((&[][..], &[][..]), |(f, r)| (&f[..], &r[..]));
            stays(key(from, room, u.msg_id, u.ts_us), u.payload.len())
        });
        self.fan.retain(|(_, m)| {
            stays(
                key(&m.from_user, &m.to_room, m.msg_id, m.ts_us),
                m.payload.len(),
            )
        });
        self.bytes -= freed;
        if self.q.is_empty() {
            self.names.clear();
            self.names_base = 0;
        }
    }

    /// Forgets the messages that are in the store (they are removed from it by acks,
    /// never stored again).
    pub fn forget_stored(&mut self) {
        self.q.retain(|u| u.store_seq == 0);
        if self.q.is_empty() {
            self.names.clear();
            self.names_base = 0;
        }
    }

    fn pop_oldest(&mut self, n: usize, keep: bool, max_bytes: usize) -> Vec<StoredMsg> {
        let mut out = Vec::with_capacity(if keep { n.min(self.len()) } else { 0 });
        let mut bytes = 0usize;
        for _ in 0..n {
            if bytes >= max_bytes {
                break;
            }
            // The two queues merge by seq.
            let room_first = match (self.q.front(), self.fan.front()) {
                (Some(u), Some((s, _))) => *s < u.seq,
                (None, Some(_)) => true,
                (_, None) => false,
            };
            if room_first {
                let Some((_, m)) = self.fan.pop_front() else {
                    break;
                };
                self.bytes -= m.payload.len();
                bytes += m.payload.len();
                if keep {
                    out.push(stored_msg(
                        &m.from_user,
                        &m.to_room,
                        m.payload.clone(),
                        m.ts_us,
                        m.msg_id,
                    ));
                }
                continue;
            }
            let Some(u) = self.q.pop_front() else {
                break;
            };
            self.bytes -= u.payload.len();
            bytes += u.payload.len();
            if !keep || u.store_seq != 0 {
                continue;
            }
            let idx = u.name.saturating_sub(self.names_base) as usize;
            let (from_user, to_room) = self.names.get(idx).cloned().unwrap_or_default();
            out.push(stored_msg(
                &from_user,
                &to_room,
                u.payload.into_bytes(),
                u.ts_us,
                u.msg_id,
            ));
        }
        if self.q.is_empty() {
            // (Names are dropped with the queue: entries only refer to names behind them.)
            self.names.clear();
            self.names_base = 0;
        }
        out
    }
}

/// A message on its way into sessions, borrowed from wherever it is.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    /// Authenticated sender.
    pub from_user: &'a Bytes,
    /// Room, empty for a direct message.
    pub to_room: &'a Bytes,
    /// Payload.
    pub payload: &'a Bytes,
    /// Message id.
    pub msg_id: u64,
    /// Router clock at acceptance.
    pub ts_us: u64,
    /// Its seq in the recipient's offline queue (sync mode), 0 if not stored.
    pub store_seq: u64,
    /// The same payload as a reference the sessions of this shard share (room fan-out).
    pub fanned: Option<&'a Rc<FanMsg>>,
}

impl Outgoing<'_> {
    /// The message as a store record, its small payload copied (it waits in the store's
    /// queue: see [`OwnedMsg::unpinned`]).
    pub(crate) fn to_stored(self) -> StoredMsg {
        stored_msg(
            self.from_user,
            self.to_room,
            crate::outbuf::unpinned(self.payload),
            self.ts_us,
            self.msg_id,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbuf::FanMsg;

    fn fan(id: u64) -> Rc<FanMsg> {
        Rc::new(FanMsg::new(
            Bytes::from(format!("room {id}")),
            Bytes::from_static(b"ann"),
            Bytes::from_static(b"lobby"),
            id,
            id,
        ))
    }

    /// A live delivery of room message `m`.
    fn fanned(m: &Rc<FanMsg>) -> Outgoing<'_> {
        Outgoing {
            from_user: &m.from_user,
            to_room: &m.to_room,
            payload: &m.payload,
            msg_id: m.msg_id,
            ts_us: m.ts_us,
            store_seq: 0,
            fanned: Some(m),
        }
    }

    /// The shared payload of entry `seq` of `q`.
    fn shared_at(r: &Retained, seq: u64) -> *const u8 {
        match r.q.iter().find(|e| e.seq == seq).map(|e| &e.payload) {
            Some(RetainedPayload::Shared(b)) => b.as_ptr(),
            other => panic!("{other:?}"),
        }
    }

    /// Stamps are the wall clock's: after it stepped back, a message stamped before
    /// the step is in the future. It is unpinned as an old one, and so is what follows
    /// it; a message younger than the age is not.
    #[test]
    fn unpin_takes_a_message_stamped_in_the_future_as_old() {
        let chunk = Bytes::from(vec![7u8; 64 << 10]);
        let (bob, empty) = (Bytes::from_static(b"bob"), Bytes::new());
        let now = 1_000_000_000u64;
        let mut r = Retained::default();
        // Stamped 10 s ahead (before the step back), then 1 s ago, then just now.
        for (i, ts) in [now + 10_000_000, now - 1_000_000, now]
            .into_iter()
            .enumerate()
        {
            let p = chunk.slice(i * 100..i * 100 + 100);
            let m = Outgoing {
                from_user: &bob,
                to_room: &empty,
                payload: &p,
                msg_id: i as u64,
                ts_us: ts,
                store_seq: 0,
                fanned: None,
            };
            r.push(i as u64 + 1, &m);
        }
        r.unpin(now - PIN_MAX_US, &mut Unpinning::default());
        assert_ne!(shared_at(&r, 1), chunk.as_ptr(), "in the future: copied");
        assert_ne!(shared_at(&r, 2), chunk[100..].as_ptr(), "old: copied");
        assert_eq!(
            shared_at(&r, 3),
            chunk[200..].as_ptr(),
            "young: a reference"
        );
    }

    /// Payloads kept by reference past their age get copies of their own, so that their
    /// read buffer goes; younger ones stay references; each is copied once; the members
    /// holding a room message (the devices holding a message) share one copy; what comes
    /// back is the same.
    #[test]
    fn unpin_copies_the_old_shared_payloads_once() {
        let chunk = Bytes::from(vec![7u8; 64 << 10]);
        let (bob, empty) = (Bytes::from_static(b"bob"), Bytes::new());
        let mut r = Retained::default();
        for i in 0..200u64 {
            let p = chunk.slice(i as usize * 100..i as usize * 100 + 100);
            let m = Outgoing {
                from_user: &bob,
                to_room: &empty,
                payload: &p,
                msg_id: i,
                ts_us: i + 1,
                store_seq: 0,
                fanned: None,
            };
            r.push(i + 1, &m);
        }
        let room = Rc::new(FanMsg::new(
            chunk.slice(30_000..30_200),
            bob.clone(),
            Bytes::from_static(b"lobby"),
            9,
            50,
        ));
        r.push(201, &fanned(&room));
        let mut other = Retained::default();
        other.push(1, &fanned(&room));
        drop(room);
        // Another device of the user holds the first message too.
        let first = chunk.slice(0..100);
        other.push(
            2,
            &Outgoing {
                from_user: &bob,
                to_room: &empty,
                payload: &first,
                msg_id: 0,
                ts_us: 1,
                store_seq: 0,
                fanned: None,
            },
        );
        drop(first);
        let want: Vec<Bytes> =
            r.q.iter()
                .map(|e| Bytes::copy_from_slice(e.payload.bytes()))
                .collect();
        // Accepted before 101: seqs 1 to 100 and the room message.
        let mut copies = Unpinning::default();
        r.unpin(101, &mut copies);
        other.unpin(101, &mut copies);
        drop(copies);
        assert!(
            Rc::ptr_eq(&r.fan[0].1, &other.fan[0].1),
            "one copy for the members"
        );
        assert_eq!(
            shared_at(&r, 1),
            shared_at(&other, 2),
            "one copy for the devices"
        );
        assert_ne!(r.fan[0].1.payload.as_ptr(), chunk[30_000..].as_ptr());
        assert_ne!(shared_at(&r, 100), chunk[9_900..].as_ptr());
        assert_eq!(
            shared_at(&r, 101),
            chunk[10_000..].as_ptr(),
            "younger: a reference"
        );
        let copied = shared_at(&r, 1);
        assert!(!chunk.is_unique());
        r.unpin(u64::MAX, &mut Unpinning::default());
        assert_eq!(shared_at(&r, 1), copied, "copied once");
        assert!(
            chunk.is_unique(),
            "a retained payload still keeps the chunk"
        );
        let back: Vec<Bytes> = r.take_unstored().into_iter().map(|m| m.payload).collect();
        assert_eq!(back.len(), 201);
        assert_eq!(&back[..200], &want[..]);
        assert_eq!(&back[200][..], &[7u8; 200][..]);
    }

    /// The block queue keeps its entries in order through pushes, pops and a retain; a
    /// small queue holds a small block, and no block grows past its size.
    #[test]
    fn retained_entries_keep_their_order_in_blocks_that_never_grow() {
        let entry = |seq: u64| RetainedEntry {
            seq,
            store_seq: seq % 3,
            payload: RetainedPayload::NONE,
            msg_id: seq,
            ts_us: seq,
            name: 0,
        };
        let caps = |q: &Blocks| -> Vec<usize> {
            let full = q.full.iter().map(VecDeque::capacity);
            full.chain([q.tail.capacity()]).collect()
        };
        let mut q = Blocks::default();
        q.push_back(entry(1));
        assert!(q.tail.capacity() < 8, "{}", q.tail.capacity());
        for seq in 2..=1000 {
            q.push_back(entry(seq));
        }
        let most = caps(&q).into_iter().max().unwrap_or(0);
        assert!(most < 2 * BLOCK, "{:?}", caps(&q));
        assert_eq!(q.len(), 1000);
        for seq in 1..=100 {
            assert_eq!(q.pop_front().map(|e| e.seq), Some(seq));
        }
        q.drop_front();
        for seq in 1001..=1100 {
            q.push_back(entry(seq));
        }
        assert!(caps(&q).iter().all(|&c| c <= most), "a block grew");
        assert_eq!(q.front().map(|e| e.seq), Some(102));
        q.retain(|e| e.store_seq == 0);
        let seqs: Vec<u64> = q.iter().map(|e| e.seq).collect();
        assert_eq!(
            seqs,
            (102..=1100).filter(|s| s % 3 == 0).collect::<Vec<_>>()
        );
        assert_eq!(q.len(), seqs.len());
        while q.pop_front().is_some() {}
        assert!(q.is_empty() && q.full.is_empty());
    }

    /// A small payload is copied into its entry in place (`push_entry`): what comes
    /// back is its bytes, for every size up to the inline bound and one past it.
    #[test]
    fn retained_small_payloads_come_back_whole() {
        let mut r = Retained::default();
        let (bob, empty) = (Bytes::from_static(b"bob"), Bytes::new());
        let payloads: Vec<Bytes> = (0..=RETAIN_INLINE + 1)
            .map(|n| Bytes::from((0..n).map(|i| (i * 7 + n) as u8).collect::<Vec<u8>>()))
            .collect();
        for (seq, p) in payloads.iter().enumerate() {
            let m = Outgoing {
                from_user: &bob,
                to_room: &empty,
                payload: p,
                msg_id: seq as u64,
                ts_us: 1,
                store_seq: 0,
                fanned: None,
            };
            r.push(seq as u64 + 1, &m);
        }
        let total: usize = payloads.iter().map(Bytes::len).sum();
        assert_eq!(r.bytes(), total);
        let back: Vec<Bytes> = r.take_unstored().into_iter().map(|m| m.payload).collect();
        assert_eq!(back, payloads);
    }

    #[test]
    fn retained_keeps_direct_and_room_messages_in_seq_order_until_acked() {
        let mut r = Retained::default();
        let (bob, empty) = (Bytes::from_static(b"bob"), Bytes::new());
        let big = Bytes::from(vec![7u8; 300]);
        let direct = |payload: &Bytes, id: u64| {
            let m = Outgoing {
                from_user: &bob,
                to_room: &empty,
                payload,
                msg_id: id,
                ts_us: id,
                store_seq: 0,
                fanned: None,
            };
            StoredMsg {
                from_user: "bob".into(),
                to_room: String::new(),
                payload: m.payload.clone(),
                server_ts_us: id,
                msg_id: id,
                room_event: 0,
                contact_event: 0,
            }
        };
        let small = Bytes::from_static(b"hi");
        let push_direct = |r: &mut Retained, seq: u64, p: &Bytes| {
            let m = Outgoing {
                from_user: &bob,
                to_room: &empty,
                payload: p,
                msg_id: seq,
                ts_us: seq,
                store_seq: 0,
                fanned: None,
            };
            r.push(seq, &m);
        };
        push_direct(&mut r, 1, &small);
        let f2 = fan(2);
        r.push(2, &fanned(&f2));
        push_direct(&mut r, 3, &big);
        r.push_stored(4, 17);
        let f5 = fan(5);
        r.push(
            5,
            &Outgoing {
                fanned: Some(&f5),
                msg_id: 5,
                ts_us: 5,
                ..fanned(&f2)
            },
        );
        assert_eq!(r.len(), 5);
        // Acking 2 drops one of each kind; nothing stored among them.
        assert_eq!(r.ack(2), 0);
        assert_eq!(r.len(), 3);
        // What is left and not in the store comes back in seq order: 3 (direct), 5 (room).
        let rest = r.take_unstored();
        assert_eq!(rest.len(), 2);
        assert_eq!(rest[0], direct(&big, 3));
        assert_eq!(
            (
                rest[1].msg_id,
                rest[1].to_room.as_str(),
                rest[1].from_user.as_str()
            ),
            (5, "lobby", "ann")
        );
        assert!(r.is_empty());
        // A stored entry is reported by the ack that covers it.
        r.push_stored(6, 40);
        r.push_stored(7, 41);
        assert_eq!(r.ack(7), 41);
    }

    #[test]
    fn the_oldest_are_taken_or_dropped_a_slice_at_a_time_in_seq_order() {
        let (bob, empty) = (Bytes::from_static(b"bob"), Bytes::new());
        let payload = Bytes::from_static(b"p");
        let fill = || {
            // Seqs 1..=8: direct on odd seqs, room on even ones, seq 5 in the store.
            let mut r = Retained::default();
            let fans: Vec<_> = (1..=8u64).map(fan).collect();
            for seq in 1..=8u64 {
                let m = Outgoing {
                    from_user: &bob,
                    to_room: &empty,
                    payload: &payload,
                    msg_id: seq,
                    ts_us: seq,
                    store_seq: 0,
                    fanned: None,
                };
                match seq {
                    5 => r.push_stored(5, 99),
                    s if s % 2 == 1 => r.push(s, &m),
                    s => r.push(
                        s,
                        &Outgoing {
                            fanned: Some(&fans[s as usize - 1]),
                            ..m
                        },
                    ),
                }
            }
            r
        };
        let ids = |v: Vec<StoredMsg>| v.iter().map(|m| m.msg_id).collect::<Vec<_>>();
        let mut r = fill();
        assert_eq!(ids(r.take_oldest(3, usize::MAX)), [1, 2, 3]);
        // The stored entry (seq 5) counts in the slice and is left out.
        assert_eq!(ids(r.take_oldest(3, usize::MAX)), [4, 6]);
        assert_eq!(r.len(), 2);
        // A slice ends once its payloads reach the byte bound (one-byte payloads).
        assert_eq!(ids(r.take_oldest(10, 1)), [7]);
        assert_eq!(ids(r.take_oldest(10, usize::MAX)), [8]);
        assert!(r.is_empty() && r.bytes() == 0);
        let mut r = fill();
        r.forget_stored();
        assert_eq!(r.len(), 7);
        r.drop_oldest(5);
        assert_eq!(r.len(), 2);
        assert_eq!(ids(r.take_unstored()), [7, 8]);
        assert_eq!(r.bytes(), 0);
        // Emptied, it takes new deliveries with their names.
        r.push(
            9,
            &Outgoing {
                from_user: &bob,
                to_room: &empty,
                payload: &payload,
                msg_id: 9,
                ts_us: 9,
                store_seq: 0,
                fanned: None,
            },
        );
        assert_eq!(r.take_unstored()[0].from_user, "bob");
    }

    /// A room message kept by many sessions counts its one copy once between them; a
    /// direct message's payload counts whole for its only holder.
    #[test]
    fn held_bytes_count_a_shared_room_message_once_between_its_holders() {
        let big = Rc::new(FanMsg::new(
            Bytes::from(vec![1u8; 64 << 10]),
            Bytes::from_static(b"ann"),
            Bytes::from_static(b"lobby"),
            1,
            1,
        ));
        let mut holders: Vec<Retained> = (0..64).map(|_| Retained::default()).collect();
        for r in &mut holders {
            r.push(1, &fanned(&big));
        }
        let total: usize = holders.iter().map(Retained::held_bytes).sum();
        assert!(
            (64 << 10..(64 << 10) + 64 * 64 + 512).contains(&total),
            "64 holders of one 64 KiB room message: {total}"
        );
        // Alone, a holder counts the whole copy.
        holders.truncate(1);
        drop(big);
        assert!(holders[0].held_bytes() > 64 << 10);
        // A direct message's shared payload counts whole, its entry too.
        let (bob, empty, p) = (
            Bytes::from_static(b"bob"),
            Bytes::new(),
            Bytes::from(vec![2u8; 1000]),
        );
        let mut d = Retained::default();
        d.push(
            1,
            &Outgoing {
                from_user: &bob,
                to_room: &empty,
                payload: &p,
                msg_id: 1,
                ts_us: 1,
                store_seq: 0,
                fanned: None,
            },
        );
        assert!(d.held_bytes() >= 1000 + std::mem::size_of::<RetainedEntry>());
    }
}
