//! A session's outbound queue and the iovec batch handed to `writev`.
//!
//! Frames are appended to one contiguous buffer, except payloads larger than the
//! inline threshold: those are kept as the sender's own `Bytes` (a slice of the
//! sender's read buffer) and written by their own iovec, never copied.

use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use prost::Message;
use ringrouter_proto::codec::encode_frame;
use ringrouter_proto::fast::{
    copy_short, put_deliver_header_bytes, DeliverStamp, DeliverTemplate, DELIVER_HEADER_ROOM,
    SEQ_SLOT, TEMPLATE_MAX_SEQ,
};

/// Smallest allocation of the contiguous write buffer of a busy session.
const CHUNK: usize = 64 * 1024;

/// Allocation of the contiguous write buffer of a session that has none (new, or idle
/// and released): a LoginResult, a Ping, a few Delivers. A session that stays busy
/// grows it to [`CHUNK`] at its first overflow.
const FIRST: usize = 1024;

/// Most iovecs passed to one writev (Linux IOV_MAX).
const IOV_MAX: usize = 1024;

/// A room message as the sessions of one shard share it: one allocation per shard and
/// message, referenced (a plain, non-atomic increment) by every member session's write
/// queue and unacked queue.
#[derive(Debug)]
pub struct FanMsg {
    /// The payload (the sender's buffer).
    pub payload: Bytes,
    /// Authenticated sender.
    pub from_user: Bytes,
    /// The room.
    pub to_room: Bytes,
    /// Message id.
    pub msg_id: u64,
    /// Router clock at acceptance.
    pub ts_us: u64,
    /// Its Deliver header, encoded once for every session of the shard.
    pub header: DeliverTemplate,
    /// The whole frame (`header`, then the payload), when it is at most [`WHOLE`]
    /// bytes: `whole_len` of them, the rest zero. A member's copy of a small room
    /// message is one fixed-size copy (no `memcpy` calls: see [`OutBuf::push_fanned`]).
    whole: [u8; WHOLE],
    /// Bytes of `whole` that are the frame; 0 when it does not fit.
    whole_len: usize,
    /// Where the seq slot is in `whole` (`whole_seq_at + SEQ_SLOT <= whole_len`).
    whole_seq_at: usize,
}

/// Most bytes of a room message's whole frame kept for copying in one fixed-size
/// move (a 64-byte payload and its header fit).
const WHOLE: usize = 128;

impl FanMsg {
    /// The shard's record of a room message (its header encoded here, once).
    pub fn new(payload: Bytes, from_user: Bytes, to_room: Bytes, msg_id: u64, ts_us: u64) -> Self {
        let stamp = DeliverStamp {
            seq: 0,
            from_user: &from_user,
            to_room: &to_room,
            server_ts_us: ts_us,
            msg_id,
        };
        let header = DeliverTemplate::new(&stamp, payload.len());
        let (mut whole, mut whole_len) = ([0u8; WHOLE], 0);
        let (h, n) = (header.bytes.len(), header.bytes.len() + payload.len());
        let whole_seq_at = header.seq_at;
        // (The slot is inside the header; checked here, where `push_fanned_whole`'s
        // writes rely on it.)
        if n <= WHOLE && whole_seq_at + SEQ_SLOT <= h {
            whole[..h].copy_from_slice(&header.bytes);
            whole[h..n].copy_from_slice(&payload);
            whole_len = n;
        }
        FanMsg {
            payload,
            from_user,
            to_room,
            msg_id,
            ts_us,
            header,
            whole,
            whole_len,
            whole_seq_at,
        }
    }
}

impl FanMsg {
    /// The same message with its payload and names copied: it keeps no read buffer.
    fn unpinned(&self) -> FanMsg {
        FanMsg {
            payload: Bytes::copy_from_slice(&self.payload),
            from_user: Bytes::copy_from_slice(&self.from_user),
            to_room: Bytes::copy_from_slice(&self.to_room),
            header: self.header.clone(),
            ..*self
        }
    }
}

/// Copies of payloads made in one sweep of a shard's sessions (see
/// `retention::PIN_MAX_US`): a payload several holders shared (a room message's members,
/// a user's devices, a session's unacked entry and its queued write) gets one copy that
/// they share again, not a copy each (a room's 1 000 members not reading would hold
/// 1 000 copies of what was one). Keyed by the old payload, which the map keeps alive
/// (its address is not reused during the sweep).
#[derive(Default)]
pub struct Unpinning {
    fans: std::collections::HashMap<*const FanMsg, (Rc<FanMsg>, Rc<FanMsg>)>,
    bytes: std::collections::HashMap<(usize, usize), (Bytes, Bytes)>,
}

/// A payload held by reference is copied out of its read buffer (see
/// `retention::PIN_MAX_US`) only up to this long: a longer one keeps at most four times
/// its own bytes alive (read chunks are 64 KiB; a bigger frame is read into a buffer of
/// its own), and copying it would only add its bytes again, at the moment memory is
/// short (`--max-memory`).
pub const COPY_MAX: usize = 16 << 10;

/// A copy of `b` that keeps no read buffer (`b` itself past [`COPY_MAX`]).
pub fn unpinned(b: &Bytes) -> Bytes {
    if b.len() > COPY_MAX {
        b.clone()
    } else {
        Bytes::copy_from_slice(b)
    }
}

impl Unpinning {
    /// `b`'s copy (`b` itself past [`COPY_MAX`]).
    pub fn bytes(&mut self, b: &Bytes) -> Bytes {
        if b.len() > COPY_MAX {
            return b.clone();
        }
        let (_, copy) = self
            .bytes
            .entry((b.as_ptr() as usize, b.len()))
            .or_insert_with(|| (b.clone(), Bytes::copy_from_slice(b)));
        copy.clone()
    }

    /// `m`'s copy (`m` itself past [`COPY_MAX`]).
    pub fn fan(&mut self, m: &Rc<FanMsg>) -> Rc<FanMsg> {
        if m.payload.len() > COPY_MAX {
            return m.clone();
        }
        let (_, copy) = self
            .fans
            .entry(Rc::as_ptr(m))
            .or_insert_with(|| (m.clone(), Rc::new(m.unpinned())));
        copy.clone()
    }
}

/// Bytes of `payload` that go into the contiguous buffer.
fn inline_len(payload: &[u8], inline: bool) -> usize {
    if inline {
        payload.len()
    } else {
        0
    }
}

/// A payload written by reference, after the local bytes up to `local_end` (of the
/// current chunk: `data`, or the first of `closed` not yet ended).
#[derive(Debug)]
struct Seg {
    local_end: usize,
    payload: Part,
}

/// A payload buffer an iovec points into.
#[derive(Debug)]
enum Part {
    /// The sender's buffer.
    Bytes(Bytes),
    /// A payload shared by the sessions of this shard (a room fan-out): taking a
    /// reference is a plain increment, not an atomic one on a counter other cores use.
    Fanned(Rc<FanMsg>),
    /// Not a payload: the current chunk of local bytes ends here (it is the next of
    /// `OutBuf::closed`), and the following offsets count in the next one.
    ChunkEnd,
}

impl Part {
    fn as_slice(&self) -> &[u8] {
        match self {
            Part::Bytes(b) => b,
            Part::Fanned(m) => &m.payload,
            Part::ChunkEnd => &[],
        }
    }
}

/// A full contiguous buffer holding at least this much is closed and a new one started,
/// instead of growing it (which copies what it holds).
const CLOSE_AT: usize = 4096;

/// Outbound queue of one session. Appending never blocks; the writer task takes
/// everything queued at once ([`OutBuf::take`]) for one writev.
///
/// `repr(C)`: what an append reads and writes (`data`, `len`, `copied_bytes`) comes
/// first, in the cache line the session's fan-out prefetch asks for (see `Session`).
#[derive(Debug, Default)]
#[repr(C)]
pub struct OutBuf {
    data: BytesMut,
    len: usize,
    /// Payload bytes copied into the contiguous buffer (at or below the inline threshold).
    pub copied_bytes: u64,
    /// Payload bytes queued by reference (never copied).
    pub zero_copy_bytes: u64,
    segs: Vec<Seg>,
    /// Full buffers of local bytes queued before `data`, oldest first (each ended by a
    /// `Part::ChunkEnd` seg).
    closed: Vec<Bytes>,
    /// A written-out buffer, uniquely owned again, kept for reuse.
    spare: Option<BytesMut>,
    /// A writer has taken a batch (so the session's first frame, its LoginResult, is
    /// on its way).
    taken: bool,
    /// `segs[..unpinned]` keep no read buffer ([`OutBuf::unpin_aged`]).
    unpinned: usize,
    /// How many segs there were at the last [`OutBuf::unpin_aged`].
    aged: usize,
}

/// Asks the CPU to start loading the cache line at `p` (no effect on other targets).
#[inline(always)]
pub(crate) fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

impl OutBuf {
    /// Starts loading where the next frame will be written (see `Shard::deliver_fan`).
    #[inline(always)]
    pub fn prefetch_tail(&self) {
        prefetch(self.data.as_ptr().wrapping_add(self.data.len()));
    }

    /// Queued bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of `len` that are room payloads shared with the shard's other sessions (a
    /// pass over the queue: for the memory ceiling's rare choice, not per delivery).
    pub fn shared_bytes(&self) -> usize {
        self.segs
            .iter()
            .filter(|s| matches!(s.payload, Part::Fanned(_)))
            .map(|s| s.payload.as_slice().len())
            .sum()
    }

    /// Gives the payloads queued by reference since before the last call (a ticker's
    /// period: 100 ms by default) and still not taken by the writer a copy of their own,
    /// so that they keep no read buffer: a session that does not read would keep a 64
    /// KiB read chunk for each 300-byte payload queued under `--max-pending-bytes` (see
    /// `retention::PIN_MAX_US`). A queue the writer keeps taking is never copied.
    pub fn unpin_aged(&mut self, copies: &mut Unpinning) {
        let aged = self.aged.min(self.segs.len());
        for seg in self.segs.get_mut(self.unpinned..aged).into_iter().flatten() {
            match &mut seg.payload {
                Part::Bytes(b) => *b = copies.bytes(b),
                Part::Fanned(m) => *m = copies.fan(m),
                Part::ChunkEnd => {}
            }
        }
        self.unpinned = self.unpinned.max(aged);
        self.aged = self.segs.len();
    }

    /// [`OutBuf::unpin_aged`] for every payload queued.
    pub fn unpin_all(&mut self, copies: &mut Unpinning) {
        self.aged = self.segs.len();
        self.unpin_aged(copies);
    }

    /// True once a writer has taken a batch from this queue.
    pub fn taken(&self) -> bool {
        self.taken
    }

    /// Drops everything queued (a session cut as a slow consumer: what it was sent is
    /// in its unacked queue, and goes back to the store).
    pub fn clear(&mut self) {
        self.data.clear();
        self.closed.clear();
        self.segs.clear();
        self.len = 0;
        (self.unpinned, self.aged) = (0, 0);
    }

    /// Frees the buffers of an empty queue, so that an idle session holds none (the
    /// next frame allocates [`FIRST`] bytes). Does nothing while something is queued.
    pub fn release(&mut self) {
        if self.len != 0 {
            return;
        }
        if self.data.capacity() != 0 {
            self.data = BytesMut::new();
        }
        self.spare = None;
        if self.segs.capacity() != 0 {
            self.segs = Vec::new();
        }
        (self.unpinned, self.aged) = (0, 0);
    }

    /// Appends a protobuf frame (length-delimited).
    pub fn push_frame<M: Message>(&mut self, msg: &M) {
        self.ensure(msg.encoded_len() + 10);
        let before = self.data.len();
        encode_frame(msg, &mut self.data);
        self.len += self.data.len() - before;
    }

    /// Appends a Deliver. A payload longer than `inline_max` is queued by
    /// reference; shorter ones are copied next to their header.
    pub fn push_deliver(&mut self, stamp: &DeliverStamp<'_>, payload: &Bytes, inline_max: usize) {
        let inline = payload.len() <= inline_max;
        self.ensure(
            DELIVER_HEADER_ROOM
                + stamp.from_user.len()
                + stamp.to_room.len()
                + inline_len(payload, inline),
        );
        let before = self.data.len();
        put_deliver_header_bytes(&mut self.data, stamp, payload.len());
        self.len += self.data.len() - before + payload.len();
        if inline {
            // (Room was made above for the header and the payload; this check, which
            // never grows the buffer then, is what the copy's safety rests on.)
            self.ensure(payload.len());
            let at = self.data.len();
            // SAFETY: `ensure` just left at least `payload.len()` bytes of spare
            // capacity; the length covers them once written. The payload is not in
            // `data` (another buffer: the sender's).
            unsafe {
                let dst = self.data.spare_capacity_mut().as_mut_ptr().cast::<u8>();
                copy_short(payload.as_ptr(), dst, payload.len());
                self.data.set_len(at + payload.len());
            }
            self.copied_bytes += payload.len() as u64;
        } else {
            self.segs.push(Seg {
                local_end: self.data.len(),
                payload: Part::Bytes(payload.clone()),
            });
            self.zero_copy_bytes += payload.len() as u64;
        }
    }

    /// Appends the Deliver of a room message with this session's `seq`: the shard's
    /// header copied and its seq slot filled in (no per-field encoding), the payload
    /// by reference (or copied when at most `inline_max` bytes).
    #[inline(always)]
    pub fn push_fanned(&mut self, m: &Rc<FanMsg>, seq: u64, inline_max: usize) {
        if seq > TEMPLATE_MAX_SEQ {
            return self.push_fanned_encoded(m, seq, inline_max);
        }
        let inline = m.payload.len() <= inline_max;
        if inline && m.whole_len != 0 {
            return self.push_fanned_whole(m, seq);
        }
        let header = &m.header.bytes[..];
        let copied = inline_len(&m.payload, inline);
        self.ensure(header.len() + copied);
        let start = self.data.len();
        // Header and copied payload with one length update (not `put_slice`'s checks
        // twice): this runs once per member and message.
        // SAFETY: `ensure` left room for both in the spare capacity; both are written
        // before the length covers them, and neither source is in `data`.
        unsafe {
            let dst = self.data.spare_capacity_mut().as_mut_ptr().cast::<u8>();
            std::ptr::copy_nonoverlapping(header.as_ptr(), dst, header.len());
            std::ptr::copy_nonoverlapping(m.payload.as_ptr(), dst.add(header.len()), copied);
            self.data.set_len(start + header.len() + copied);
        }
        m.header.put_seq(&mut self.data[start..], seq);
        // Counted here as `push_deliver` counts: through a helper shared with it, a
        // delivery cost 8 instructions more (`bench/ir.sh`, fan-out 1 → 64).
        self.len += header.len() + m.payload.len();
        if inline {
            self.copied_bytes += copied as u64;
        } else {
            self.segs.push(Seg {
                local_end: self.data.len(),
                payload: Part::Fanned(m.clone()),
            });
            self.zero_copy_bytes += m.payload.len() as u64;
        }
    }

    /// [`OutBuf::push_fanned`] of a message whose whole frame fits in [`WHOLE`] bytes,
    /// its payload copied: all [`WHOLE`] bytes moved at once (a fixed-size copy, inlined
    /// as a few vector moves; two `memcpy` calls cost ~50 instructions a delivery), the
    /// length then set to cover the frame only.
    #[inline(always)]
    fn push_fanned_whole(&mut self, m: &FanMsg, seq: u64) {
        self.ensure(WHOLE);
        let n = m.whole_len;
        let start = self.data.len();
        let slot = m.whole_seq_at;
        // SAFETY: `ensure` left at least `WHOLE` bytes of spare capacity, and `m.whole`
        // (another allocation) has `WHOLE` bytes, so the copy stays within both. The
        // seq slot lies within the frame's first `n <= WHOLE` bytes (`FanMsg::new`
        // sets `whole_len` only then), and the length covers only those `n` bytes, all
        // of them written by the copy.
        unsafe {
            let dst = self.data.spare_capacity_mut().as_mut_ptr().cast::<u8>();
            std::ptr::copy_nonoverlapping(m.whole.as_ptr(), dst, WHOLE);
            let s = DeliverTemplate::seq_slot(seq);
            std::ptr::copy_nonoverlapping(s.as_ptr(), dst.add(slot), SEQ_SLOT);
            self.data.set_len(start + n);
        }
        self.len += n;
        self.copied_bytes += m.payload.len() as u64;
    }

    /// [`OutBuf::push_fanned`] past the template's seqs: the header encoded field by field.
    #[cold]
    #[inline(never)]
    fn push_fanned_encoded(&mut self, m: &Rc<FanMsg>, seq: u64, inline_max: usize) {
        let stamp = DeliverStamp {
            seq,
            from_user: &m.from_user,
            to_room: &m.to_room,
            server_ts_us: m.ts_us,
            msg_id: m.msg_id,
        };
        self.push_deliver(&stamp, &m.payload, inline_max);
    }

    /// Makes room for `n` more bytes in the contiguous buffer: a buffer given back
    /// by the writer if there is one, else one allocation of at least
    /// [`CHUNK`] bytes (never a chain of doubling reallocations), or of [`FIRST`] bytes
    /// when the queue holds no buffer at all (a new or released, idle session). A full
    /// buffer of [`CLOSE_AT`] bytes or more is closed, not grown: what it holds is
    /// written from where it is, never copied to a bigger one.
    #[inline(always)]
    fn ensure(&mut self, n: usize) {
        if self.data.capacity() - self.data.len() < n {
            self.grow(n);
        }
    }

    /// [`OutBuf::ensure`] when the buffer has less than `n` bytes free.
    #[cold]
    #[inline(never)]
    fn grow(&mut self, n: usize) {
        if self.data.len() >= CLOSE_AT {
            let full = self.data.split().freeze();
            self.segs.push(Seg {
                local_end: full.len(),
                payload: Part::ChunkEnd,
            });
            self.closed.push(full);
            // A busy queue: the next buffer is a chunk at once.
            self.data = match self.spare.take() {
                Some(spare) if spare.capacity() >= n.max(CHUNK) => spare,
                _ => BytesMut::with_capacity(n.max(CHUNK)),
            };
            return;
        }
        if self.data.is_empty() {
            if let Some(spare) = self.spare.take() {
                if spare.capacity() >= n {
                    self.data = spare;
                    return;
                }
            }
        }
        let min = if self.data.capacity() == 0 {
            FIRST
        } else {
            CHUNK
        };
        self.data.reserve(n.max(min));
    }

    /// Takes everything queued as one write batch, leaving the queue empty.
    /// `spare` is a previously written batch whose allocations are reused. (Boxed: the
    /// writer's future and the session keep 8 bytes for it, not 128, idle ones too.)
    pub fn take(&mut self, spare: Option<Box<WriteBatch>>) -> Box<WriteBatch> {
        self.taken = true;
        let mut batch = spare.unwrap_or_default();
        batch.reset();
        // Headers are written straight from the chunks of local bytes, which the batch
        // keeps alive (heap buffers do not move with their handles): no reference count
        // per slice. The closed ones move into `held`; both vectors keep their capacity,
        // so a batch allocates nothing here.
        batch.held.append(&mut self.closed);
        let data = self.data.split().freeze();
        {
            let WriteBatch {
                iov,
                parts,
                held,
                pinning,
                ..
            } = &mut *batch;
            let chunk = |k: usize| held.get(k).map_or(&data[..], |c| &c[..]);
            let (mut k, mut prev) = (0usize, 0usize);
            for seg in self.segs.drain(..) {
                if seg.local_end > prev {
                    iov.push(iovec_of(&chunk(k)[prev..seg.local_end]));
                }
                if let Part::ChunkEnd = seg.payload {
                    (k, prev) = (k + 1, 0);
                } else {
                    prev = seg.local_end;
                    let v = iovec_of(seg.payload.as_slice());
                    *pinning |= v.iov_len <= COPY_MAX;
                    // (A batch has fewer iovecs than u32::MAX: each is a queued frame's.)
                    parts.push((iov.len() as u32, seg.payload));
                    iov.push(v);
                }
            }
            if chunk(k).len() > prev {
                iov.push(iovec_of(&chunk(k)[prev..]));
            }
        }
        batch.total = self.len;
        self.len = 0;
        (self.unpinned, self.aged) = (0, 0);
        batch.reclaim = Some(data);
        batch
    }

    /// Gives the contiguous buffers of a written batch back for reuse, if no one else
    /// holds them (the biggest is kept).
    pub fn recycle(&mut self, batch: &mut WriteBatch) {
        batch.parts.clear();
        batch.iov.clear();
        let last = batch.reclaim.take();
        for data in batch.held.drain(..).chain(last) {
            if let Ok(mut m) = data.try_into_mut() {
                m.clear();
                if self.data.is_empty() && m.capacity() > self.data.capacity() {
                    self.data = m;
                } else if self
                    .spare
                    .as_ref()
                    .is_none_or(|s| s.capacity() < m.capacity())
                {
                    self.spare = Some(m);
                }
            }
        }
    }
}

/// An iovec over `s`, which the batch it goes into keeps alive (in `parts`, `held` or
/// `reclaim`).
fn iovec_of(s: &[u8]) -> libc::iovec {
    libc::iovec {
        iov_base: s.as_ptr() as *mut libc::c_void,
        iov_len: s.len(),
    }
}

/// Buffers handed to the kernel by one writev, with the iovec array pointing into
/// them. The `Bytes` are heap allocations that do not move while the batch is
/// alive, so the iovec pointers stay valid however the batch itself is moved.
#[derive(Default)]
pub struct WriteBatch {
    /// Owners of the payload iovecs, each with its iovec's index (header iovecs point
    /// into `reclaim`).
    parts: Vec<(u32, Part)>,
    iov: Vec<libc::iovec>,
    /// First iovec not yet fully written.
    start: usize,
    total: usize,
    written: usize,
    reclaim: Option<Bytes>,
    /// Closed chunks of local bytes before `reclaim`'s (a queue that outgrew one buffer).
    held: Vec<Bytes>,
    /// Some of `parts` may keep a read buffer many times their size ([`COPY_MAX`]).
    pinning: bool,
    /// `parts[..parts_done]` are written and let go (each now a `Part::ChunkEnd`).
    parts_done: usize,
}

impl std::fmt::Debug for WriteBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteBatch")
            .field("parts", &self.parts.len())
            .field("total", &self.total)
            .finish()
    }
}

impl WriteBatch {
    fn reset(&mut self) {
        self.parts.clear();
        self.iov.clear();
        self.start = 0;
        self.total = 0;
        self.written = 0;
        self.reclaim = None;
        self.held.clear();
        self.pinning = false;
        self.parts_done = 0;
    }

    /// True when what is left to write holds payloads by reference that may keep a read
    /// buffer many times their size: a write of it that waits on a peer not reading
    /// is cancelled past `retention::PIN_MAX_US`, and the batch [`compact`]ed.
    ///
    /// [`compact`]: WriteBatch::compact
    pub fn pins(&self) -> bool {
        self.pinning && self.remaining() > 0
    }

    /// Copies what is left to write into one buffer of its own, but for payloads past
    /// [`COPY_MAX`], and lets go of every other buffer it was a slice of (the small
    /// payloads' read buffers above all): a write the peer does not take keeps little
    /// more than its own bytes, however long it waits.
    pub fn compact(&mut self) {
        let start = self.start;
        // Every part stays alive until its bytes are copied (a payload the batch alone
        // still holds would be freed under its iovec): the big ones are picked here, by
        // their iovecs' indices, and moved out after the copy.
        let old = std::mem::take(&mut self.parts);
        let big = |(k, p): &(u32, Part)| *k as usize >= start && p.as_slice().len() > COPY_MAX;
        let big_at: Vec<usize> = old
            .iter()
            .filter(|e| big(e))
            .map(|(k, _)| *k as usize)
            .collect();
        let big_len: usize = big_at.iter().map(|&k| self.iov[k].iov_len).sum();
        let mut rest = BytesMut::with_capacity(self.remaining() - big_len);
        let mut bigs = big_at.into_iter().peekable();
        let mut iov = Vec::new();
        // The big payloads' new iovec indices, in order.
        let mut at = Vec::new();
        // Where the run of copied iovecs being gathered starts in `rest`.
        let mut run: Option<usize> = None;
        let base = rest.as_ptr();
        let end_run = |iov: &mut Vec<libc::iovec>, run: &mut Option<usize>, len: usize| {
            if let Some(from) = run.take() {
                iov.push(libc::iovec {
                    // Safety: `from` <= `len` <= the capacity reserved above, which
                    // `rest` never grows past (it takes what is left but the big payloads).
                    iov_base: unsafe { base.add(from) } as *mut libc::c_void,
                    iov_len: len - from,
                });
            }
        };
        for (i, v) in self.iov.iter().enumerate().skip(start) {
            if bigs.next_if_eq(&i).is_some() {
                end_run(&mut iov, &mut run, rest.len());
                // (Fewer iovecs than the batch had: each is one of its.)
                at.push(iov.len() as u32);
                iov.push(*v);
            } else {
                run.get_or_insert(rest.len());
                // Safety: every iovec points into `parts` (now `old`), `held` or
                // `reclaim`, owned by the batch and unchanged until `reset` below.
                rest.extend_from_slice(unsafe {
                    std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len)
                });
            }
        }
        end_run(&mut iov, &mut run, rest.len());
        debug_assert_eq!(rest.as_ptr(), base, "`rest` never grows past its capacity");
        let parts = old
            .into_iter()
            .filter(big)
            .zip(at)
            .map(|((_, p), k)| (k, p))
            .collect();
        let (total, written) = (self.total, self.written);
        self.reset();
        (self.iov, self.parts) = (iov, parts);
        self.reclaim = Some(rest.freeze());
        // What was written stays counted; what is left is `rest` and the big payloads.
        (self.total, self.written) = (total, written);
    }

    /// Bytes in the batch.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Bytes not yet written.
    pub fn remaining(&self) -> usize {
        self.total - self.written
    }

    /// Records that the kernel took `n` more bytes.
    pub fn advance(&mut self, mut n: usize) {
        self.written += n;
        while n > 0 && self.start < self.iov.len() {
            let v = &mut self.iov[self.start];
            if n >= v.iov_len {
                n -= v.iov_len;
                self.start += 1;
            } else {
                // Safety: n < iov_len, so the new base stays inside the same buffer.
                v.iov_base = unsafe { (v.iov_base as *mut u8).add(n) } as *mut libc::c_void;
                v.iov_len -= n;
                n = 0;
            }
        }
        // The payloads written (or copied out: TLS, WebSocket) go now, not when the
        // whole batch is out: a peer that stops reading keeps only what is left.
        while let Some((k, p)) = self.parts.get_mut(self.parts_done) {
            if *k as usize >= self.start {
                break;
            }
            *p = Part::ChunkEnd;
            self.parts_done += 1;
        }
    }

    /// Appends up to `max` of the bytes not yet written to `out` (a connection whose
    /// bytes are encoded before writing: TLS, WebSocket) and returns how many: the caller
    /// advances past them.
    pub fn gather_into(&self, out: &mut BytesMut, max: usize) -> usize {
        let mut n = 0;
        for v in &self.iov[self.start..] {
            if n >= max {
                break;
            }
            let take = v.iov_len.min(max - n);
            // Safety: every iovec points into `parts`, `held` or `reclaim`, owned by the batch
            // and unchanged while it is borrowed; `take` is within it.
            out.extend_from_slice(unsafe {
                std::slice::from_raw_parts(v.iov_base as *const u8, take)
            });
            n += take;
        }
        n
    }

    /// The buffers of the batch in write order (before any `advance`), for tests.
    pub fn parts(&self) -> Vec<&[u8]> {
        self.iov
            .iter()
            // Safety: every iovec points into `parts`, `held` or `reclaim`, owned by the batch
            // and unchanged while it is borrowed.
            .map(|v| unsafe { std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len) })
            .collect()
    }
}

// Safety: the iovecs point into `parts`, `held` and `reclaim`, heap buffers owned by the batch
// that neither move nor change while the runtime holds the batch; the pointer and
// length stay fixed until `advance`, which is only called once the op returned.
unsafe impl monoio::buf::IoVecBuf for WriteBatch {
    fn read_iovec_ptr(&self) -> *const libc::iovec {
        self.iov[self.start..].as_ptr()
    }

    fn read_iovec_len(&self) -> usize {
        (self.iov.len() - self.start).min(IOV_MAX)
    }
}

// SAFETY: the same iovecs as the batch it points to, which does not move with the box.
unsafe impl monoio::buf::IoVecBuf for Box<WriteBatch> {
    fn read_iovec_ptr(&self) -> *const libc::iovec {
        (**self).read_iovec_ptr()
    }

    fn read_iovec_len(&self) -> usize {
        (**self).read_iovec_len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringrouter_proto::codec::{decode_server, next_frame};
    use ringrouter_proto::v1::{server_frame, Pong, ServerFrame};

    /// A direct message's stamp (seq 1).
    const STAMP: DeliverStamp<'static> = DeliverStamp {
        seq: 1,
        from_user: b"a",
        to_room: b"",
        server_ts_us: 9,
        msg_id: 3,
    };

    fn gather(b: &WriteBatch) -> Vec<u8> {
        let mut v = Vec::new();
        for i in b.start..b.iov.len() {
            let io = b.iov[i];
            // Safety: test-only read of the live iovecs.
            v.extend_from_slice(unsafe {
                std::slice::from_raw_parts(io.iov_base as *const u8, io.iov_len)
            });
        }
        v
    }

    #[test]
    fn copied_deliver_payloads_are_exact_at_every_length_around_the_copy_thresholds() {
        // `push_deliver` copies payloads of up to `inline_max` bytes after the header
        // (`copy_short`: moves of 4 to 64 bytes up to 128, a call past that); the frames
        // are byte for byte the field-by-field header and the payload, one after the
        // other in one queue (each copy lands right after the frame before).
        let lens: Vec<usize> = (0..=140).chain([255, 256, 1000]).collect();
        let mut q = OutBuf::default();
        let mut want = Vec::new();
        for (i, &n) in lens.iter().enumerate() {
            let payload = Bytes::from((0..n).map(|k| (k * 13 + i) as u8).collect::<Vec<_>>());
            let name = "u".repeat(1 + i % 40);
            let stamp = DeliverStamp {
                seq: i as u64 + 1,
                from_user: name.as_bytes(),
                to_room: b"",
                server_ts_us: 1_700_000_000_000_000 + i as u64,
                msg_id: (i as u64) << 20,
            };
            q.push_deliver(&stamp, &payload, 2048);
            ringrouter_proto::fast::put_deliver_header(&mut want, &stamp, n);
            want.extend_from_slice(&payload);
        }
        assert_eq!(q.len(), want.len());
        assert_eq!(gather(&q.take(None)), want);
    }

    /// A payload's own bytes, overwritten and counted as they are dropped (a use after
    /// free shows; so does when it goes).
    struct Tracked(Vec<u8>, std::sync::Arc<std::sync::atomic::AtomicUsize>);

    impl AsRef<[u8]> for Tracked {
        fn as_ref(&self) -> &[u8] {
            &self.0
        }
    }

    impl Drop for Tracked {
        fn drop(&mut self) {
            self.0.fill(0xEE);
            self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// A payload written (or copied out for TLS / WebSocket) is let go at once, not
    /// with the whole batch: a peer that stops reading mid-batch keeps only what is left.
    #[test]
    fn written_payloads_are_let_go_as_the_batch_advances() {
        let dropped = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut q = OutBuf::default();
        let mut ends = Vec::new();
        for i in 0..4u64 {
            let payload = Bytes::from_owner(Tracked(vec![i as u8; 300], dropped.clone()));
            q.push_deliver(
                &DeliverStamp {
                    seq: i + 1,
                    ..STAMP
                },
                &payload,
                64,
            );
            ends.push(q.len());
        }
        let mut batch = q.take(None);
        let gone = || dropped.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(gone(), 0);
        // Into the second payload: the first is gone, the second is half written.
        batch.advance(ends[0] + 30);
        assert_eq!(gone(), 1);
        batch.advance(ends[1] - ends[0] - 30);
        assert_eq!(gone(), 2);
        batch.advance(batch.remaining());
        assert_eq!(gone(), 4);
    }

    /// A batch a peer does not take, compacted after any partial write: what is left
    /// to write is unchanged byte for byte; small payloads (and every header) are
    /// copied and their read buffers let go, a big one is still written from its own.
    #[test]
    fn a_compacted_batch_writes_the_same_bytes_and_keeps_only_big_payloads() {
        let big = Bytes::from(vec![9u8; COPY_MAX + 1]);
        for cut in [0, 1, 30, 350, 1000, COPY_MAX, COPY_MAX + 700] {
            let chunk = Bytes::from((0..64 << 10).map(|k| k as u8).collect::<Vec<_>>());
            let mut q = OutBuf::default();
            let (mut want, mut big_end) = (Vec::new(), 0);
            for i in 0..8u64 {
                let payload = match i {
                    3 => big.clone(),
                    // Held by the batch alone: its bytes are overwritten when it goes.
                    6 | 7 => Bytes::from_owner(Tracked(vec![i as u8; 300], Default::default())),
                    _ => {
                        let at = i as usize * 1000;
                        chunk.slice(at..at + 300)
                    }
                };
                let stamp = DeliverStamp {
                    seq: i + 1,
                    ..STAMP
                };
                q.push_deliver(&stamp, &payload, 64);
                ringrouter_proto::fast::put_deliver_header(&mut want, &stamp, payload.len());
                want.extend_from_slice(&payload);
                if i == 3 {
                    big_end = want.len();
                }
            }
            let mut batch = q.take(None);
            assert!(batch.pins());
            batch.advance(cut);
            batch.compact();
            assert!(
                gather(&batch) == want[cut..],
                "cut at {cut}: not the same bytes"
            );
            assert_eq!(batch.remaining(), want.len() - cut);
            assert!(!batch.pins());
            // The read chunk is no longer held by the batch; the big payload is (by
            // reference, not copied) while its bytes are still to be written.
            assert!(chunk.try_into_mut().is_ok(), "cut at {cut}");
            let big_left = batch
                .parts
                .iter()
                .any(|(_, p)| p.as_slice().as_ptr() == big.as_ptr());
            assert_eq!(big_left, cut < big_end, "cut at {cut}");
            batch.advance(batch.remaining());
            assert_eq!(batch.remaining(), 0);
        }
    }

    #[test]
    fn large_payloads_are_written_from_the_senders_buffer() {
        let read_buf = Bytes::from(vec![7u8; 4096]);
        let payload = read_buf.slice(100..1100);
        let mut q = OutBuf::default();
        q.push_frame(&ServerFrame {
            kind: Some(server_frame::Kind::Pong(Pong { nonce: 5 })),
        });
        let stamp = STAMP;
        q.push_deliver(&stamp, &payload, 64);
        q.push_deliver(
            &DeliverStamp { seq: 2, ..stamp },
            &Bytes::from_static(b"tiny"),
            64,
        );
        assert_eq!(q.zero_copy_bytes, 1000);
        assert_eq!(q.copied_bytes, 4);
        let total = q.len();
        let batch = q.take(None);
        assert!(q.is_empty());
        assert_eq!(batch.total(), total);
        // The payload part is the very same memory as the read buffer.
        assert!(batch
            .parts()
            .iter()
            .any(|p| p.as_ptr() == payload.as_ptr() && p.len() == 1000));
        let mut stream = BytesMut::from(&gather(&batch)[..]);
        assert_eq!(stream.len(), total);
        let mut frames = Vec::new();
        while let Some(f) = next_frame(&mut stream, 1 << 20).unwrap() {
            frames.push(decode_server(f).unwrap());
        }
        assert_eq!(frames.len(), 3);
        match &frames[1].kind {
            Some(server_frame::Kind::Deliver(d)) => assert_eq!(&d.payload[..], &payload[..]),
            other => panic!("{other:?}"),
        }
    }

    /// Payloads queued by reference since before the last sweep get copies of their own
    /// (their read buffer goes); a younger one stays a reference until the next; the
    /// queue writes the same bytes either way.
    #[test]
    fn payloads_queued_across_a_sweep_let_their_read_buffer_go() {
        let chunk = Bytes::from(vec![7u8; 64 << 10]);
        let stamp = STAMP;
        let room = Rc::new(FanMsg::new(
            chunk.slice(1000..1400),
            Bytes::from_static(b"a"),
            Bytes::from_static(b"lobby"),
            4,
            9,
        ));
        let fill = |q: &mut OutBuf| {
            q.push_deliver(&stamp, &chunk.slice(0..300), 256);
            q.push_fanned(&room, 2, 256);
        };
        let mut want = OutBuf::default();
        fill(&mut want);
        let want = gather(&want.take(None));
        let mut q = OutBuf::default();
        fill(&mut q);
        drop(room);
        q.unpin_aged(&mut Unpinning::default());
        q.push_deliver(
            &DeliverStamp { seq: 3, ..stamp },
            &chunk.slice(500..800),
            256,
        );
        q.unpin_aged(&mut Unpinning::default());
        // The first two were queued before the first sweep: copied. The third not yet.
        assert!(
            !chunk.is_unique(),
            "the third payload still refers to the chunk"
        );
        q.unpin_aged(&mut Unpinning::default());
        assert!(chunk.is_unique(), "a queued payload still keeps the chunk");
        let mut full = want.clone();
        ringrouter_proto::fast::put_deliver_header(
            &mut full,
            &DeliverStamp { seq: 3, ..stamp },
            300,
        );
        full.extend_from_slice(&chunk[500..800]);
        assert_eq!(gather(&q.take(None)), full);
        // Everything queued, at once (resident memory over `--max-memory`).
        let mut q = OutBuf::default();
        q.push_deliver(&stamp, &chunk.slice(0..300), 256);
        q.unpin_all(&mut Unpinning::default());
        assert!(chunk.is_unique());
    }

    #[test]
    fn a_drained_queue_releases_its_buffers_and_starts_small() {
        let mut q = OutBuf::default();
        let pong = ServerFrame {
            kind: Some(server_frame::Kind::Pong(Pong { nonce: 5 })),
        };
        q.push_frame(&pong);
        assert!(
            q.data.capacity() <= FIRST,
            "a first frame takes a small buffer"
        );
        // Busy: the buffer grows to a chunk at its first overflow.
        for _ in 0..1000 {
            q.push_frame(&pong);
        }
        assert!(q.data.capacity() >= CHUNK);
        let mut batch = q.take(None);
        q.release(); // the batch is in flight: the queue is empty, the batch keeps its bytes
        assert_eq!(q.data.capacity(), 0);
        assert_eq!(batch.remaining(), batch.total());
        q.recycle(&mut batch);
        q.release();
        assert_eq!(q.data.capacity(), 0);
        assert!(q.spare.is_none());
        q.push_frame(&pong);
        q.release(); // not empty: kept
        assert!(!q.is_empty() && q.data.capacity() > 0);
    }

    #[test]
    fn a_queue_that_outgrows_its_buffer_closes_it_and_writes_every_frame_in_order() {
        let mut q = OutBuf::default();
        let big = Bytes::from(vec![9u8; 100]);
        let stamp = DeliverStamp {
            seq: 0,
            from_user: b"alice",
            to_room: b"room",
            server_ts_us: 1_764_000_000_000_000,
            msg_id: 77,
        };
        let n = 10_000u64;
        for seq in 1..=n {
            // Small payloads copied, every third one by reference.
            let payload = if seq.is_multiple_of(3) {
                big.clone()
            } else {
                Bytes::from(seq.to_le_bytes().to_vec())
            };
            q.push_deliver(&DeliverStamp { seq, ..stamp }, &payload, 64);
        }
        assert!(q.closed.len() >= 2, "{} chunks closed", q.closed.len());
        let total = q.len();
        let mut batch = q.take(None);
        assert!(q.is_empty() && q.closed.is_empty());
        assert_eq!(batch.total(), total);
        // Written in uneven steps, as partial writes go.
        let mut stream = Vec::new();
        let mut step = 1usize;
        while batch.remaining() > 0 {
            let rest = gather(&batch);
            let k = step.min(rest.len());
            stream.extend_from_slice(&rest[..k]);
            batch.advance(k);
            step = step * 7 % 40_009 + 1;
        }
        let mut stream = BytesMut::from(&stream[..]);
        assert_eq!(stream.len(), total);
        let mut seq = 0u64;
        while let Some(f) = next_frame(&mut stream, 1 << 20).unwrap() {
            let Some(server_frame::Kind::Deliver(d)) = decode_server(f).unwrap().kind else {
                panic!("not a Deliver");
            };
            seq += 1;
            assert_eq!(d.seq, seq);
            if seq.is_multiple_of(3) {
                assert_eq!(&d.payload[..], &big[..]);
            } else {
                assert_eq!(&d.payload[..], &seq.to_le_bytes()[..]);
            }
        }
        assert_eq!(seq, n);
        // Written out: the biggest buffer is kept for the next batch.
        q.recycle(&mut batch);
        assert!(
            q.data
                .capacity()
                .max(q.spare.as_ref().map_or(0, |s| s.capacity()))
                >= CHUNK
        );
    }

    #[test]
    fn partial_writes_advance_through_iovecs() {
        let mut q = OutBuf::default();
        let big = Bytes::from(vec![1u8; 300]);
        let stamp = DeliverStamp {
            seq: 1,
            from_user: b"a",
            to_room: b"",
            server_ts_us: 0,
            msg_id: 0,
        };
        for i in 0..5 {
            q.push_deliver(
                &DeliverStamp {
                    seq: i + 1,
                    ..stamp
                },
                &big,
                0,
            );
        }
        let mut batch = q.take(None);
        let full = gather(&batch);
        let mut seen = Vec::new();
        for step in [1usize, 7, 300, 2, 500] {
            let chunk = gather(&batch);
            let n = step.min(batch.remaining());
            seen.extend_from_slice(&chunk[..n]);
            batch.advance(n);
        }
        seen.extend_from_slice(&gather(&batch));
        assert_eq!(seen, full);
    }

    #[test]
    fn iovec_count_is_capped() {
        let mut q = OutBuf::default();
        let p = Bytes::from(vec![0u8; 10]);
        let stamp = DeliverStamp {
            seq: 1,
            from_user: b"a",
            to_room: b"",
            server_ts_us: 0,
            msg_id: 0,
        };
        for _ in 0..2000 {
            q.push_deliver(&stamp, &p, 0);
        }
        let b = q.take(None);
        use monoio::buf::IoVecBuf;
        assert_eq!(b.read_iovec_len(), IOV_MAX);
    }

    /// The Delivers in `bytes`, which hold whole frames and nothing else.
    fn delivers(bytes: &[u8]) -> Vec<ringrouter_proto::v1::Deliver> {
        let mut stream = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(f) = next_frame(&mut stream, 1 << 20).unwrap() {
            let Some(server_frame::Kind::Deliver(d)) = decode_server(f).unwrap().kind else {
                panic!("not a deliver")
            };
            out.push(d);
        }
        assert!(stream.is_empty(), "a partial frame");
        out
    }

    /// A room message from ann to lobby.
    fn lobby_msg(payload: &Bytes, msg_id: u64, ts_us: u64) -> Rc<FanMsg> {
        let (from, room) = (Bytes::from_static(b"ann"), Bytes::from_static(b"lobby"));
        Rc::new(FanMsg::new(payload.clone(), from, room, msg_id, ts_us))
    }

    #[test]
    fn fanned_deliveries_share_the_payload_and_carry_each_sessions_seq() {
        let payload = Bytes::from(vec![3u8; 200]);
        let m = lobby_msg(&payload, 9, 1234);
        let mut q = OutBuf::default();
        q.push_fanned(&m, 1, 0);
        q.push_fanned(&m, 300, 0);
        q.push_fanned(&m, TEMPLATE_MAX_SEQ + 1, 0); // past the slot: encoded in full
                                                    // One plain reference per templated delivery; the one past the slot references
                                                    // the payload's own buffer.
        assert_eq!(Rc::strong_count(&m), 3);
        let batch = q.take(None);
        assert!(
            batch
                .parts()
                .iter()
                .filter(|p| p.as_ptr() == payload.as_ptr())
                .count()
                == 3
        );
        let mut seqs = Vec::new();
        for d in delivers(&gather(&batch)) {
            assert_eq!(
                (d.from_user.as_str(), d.to_room.as_str(), d.msg_id),
                ("ann", "lobby", 9)
            );
            assert_eq!(d.payload, payload);
            seqs.push(d.seq);
        }
        assert_eq!(seqs, [1, 300, TEMPLATE_MAX_SEQ + 1]);
        drop(batch);
        assert_eq!(Rc::strong_count(&m), 1);
    }

    /// Small room messages (whole frame at most `WHOLE` bytes) are copied in one
    /// fixed-size move: every frame comes out exact, back to back (nothing of the move's
    /// tail left in between), with its session's seq, and counted as copied.
    #[test]
    fn small_fanned_frames_are_copied_whole_and_exact() {
        let mut q = OutBuf::default();
        let (mut want, mut fits, mut copied) = (Vec::new(), 0, 0u64);
        for size in 0..=130usize {
            let payload = Bytes::from((0..size).map(|i| i as u8 ^ 0x5a).collect::<Vec<_>>());
            let m = lobby_msg(&payload, size as u64, 1_000 + size as u64);
            fits += usize::from(m.whole_len != 0);
            for seq in [
                size as u64 + 1,
                300_000,
                TEMPLATE_MAX_SEQ,
                TEMPLATE_MAX_SEQ + 1,
            ] {
                q.push_fanned(&m, seq, 256);
                want.push((seq, payload.clone(), size as u64));
                copied += size as u64;
            }
            // A frame pushed by another writer right after: not overwritten.
            q.push_frame(&ServerFrame {
                kind: Some(server_frame::Kind::Pong(Pong { nonce: 7 })),
            });
        }
        assert!(
            fits > 60,
            "the small ones take the whole-frame copy: {fits}"
        );
        assert_eq!((q.copied_bytes, q.zero_copy_bytes), (copied, 0));
        let total = q.len();
        let batch = q.take(None);
        let bytes = gather(&batch);
        assert_eq!(bytes.len(), total);
        let mut stream = BytesMut::from(&bytes[..]);
        let mut got = Vec::new();
        while let Some(f) = next_frame(&mut stream, 1 << 20).unwrap() {
            match decode_server(f).unwrap().kind {
                Some(server_frame::Kind::Deliver(d)) => {
                    assert_eq!((d.from_user.as_str(), d.to_room.as_str()), ("ann", "lobby"));
                    assert_eq!(d.server_ts_us, 1_000 + d.msg_id);
                    got.push((d.seq, d.payload, d.msg_id));
                }
                Some(server_frame::Kind::Pong(p)) => assert_eq!(p.nonce, 7),
                k => panic!("unexpected {k:?}"),
            }
        }
        assert!(stream.is_empty(), "a partial frame");
        assert_eq!(got, want);
    }

    /// A copied payload goes out right after its header, each copy with its session's seq.
    #[test]
    fn fanned_deliveries_with_copied_payloads_are_whole_frames() {
        let payload = Bytes::from(vec![5u8; 100]);
        let m = lobby_msg(&payload, 7, 99);
        let mut q = OutBuf::default();
        for seq in 1..=3 {
            q.push_fanned(&m, seq, 256);
        }
        assert_eq!((q.copied_bytes, q.zero_copy_bytes), (300, 0));
        assert_eq!(Rc::strong_count(&m), 1);
        let total = q.len();
        let batch = q.take(None);
        let bytes = gather(&batch);
        assert_eq!(bytes.len(), total);
        let mut seqs = Vec::new();
        for d in delivers(&bytes) {
            assert_eq!(
                (d.from_user.as_str(), d.msg_id, d.server_ts_us),
                ("ann", 7, 99)
            );
            assert_eq!(d.payload, payload);
            seqs.push(d.seq);
        }
        assert_eq!(seqs, [1, 2, 3]);
    }
}
