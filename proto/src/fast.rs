//! Allocation-free encode/decode of the hot frames.
//!
//! [`parse_client`] turns a client frame body into [`Inbound`]: a `Send` is parsed
//! by hand into a [`SendView`] whose names and payload are slices of the read
//! buffer (no allocation, no copy); every other frame goes through prost.
//!
//! [`put_deliver_header`] writes everything of a length-delimited
//! `ServerFrame{deliver}` except the payload bytes, which the caller appends from
//! their own buffer (a `writev` iovec), so a payload goes from the sender's read
//! buffer to the recipient's socket untouched. Every router-owned field is
//! written by the router: nothing of the sender's frame is forwarded but the payload.

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::{gather7, put_varint, spread7, varint_at, varint_into, varint_len, FrameError};
use crate::names::MAX_NAME_BYTES;
use crate::v1::{client_frame, ClientFrame};
use prost::Message;

/// A name of a [`SendView`]: a slice of the frame's buffer, lent while the frame is
/// handled (no reference count taken: a direct message's name cost two atomic
/// operations on the read chunk's count, `bench/ir.sh`), or bytes of its own.
#[derive(Clone)]
pub enum Name<'a> {
    /// A slice of the buffer `.0` (one that is not is copied by [`Name::to_bytes`]).
    In(&'a Bytes, &'a [u8]),
    /// Bytes of its own.
    Own(Bytes),
}

impl Name<'_> {
    /// The name as [`Bytes`] of its own (a reference count on the frame's buffer).
    pub fn to_bytes(&self) -> Bytes {
        match self {
            Name::In(buf, s) if within(buf, s) => buf.slice_ref(s),
            Name::In(_, s) => Bytes::copy_from_slice(s),
            Name::Own(b) => b.clone(),
        }
    }
}

/// Whether `s` lies within `buf` (what `Bytes::slice_ref` needs, or it panics).
fn within(buf: &Bytes, s: &[u8]) -> bool {
    let (b, r) = (buf.as_ptr_range(), s.as_ptr_range());
    s.is_empty() || (b.start <= r.start && r.end <= b.end)
}

impl std::ops::Deref for Name<'_> {
    type Target = [u8];
    #[inline(always)]
    fn deref(&self) -> &[u8] {
        match self {
            Name::In(_, s) => s,
            Name::Own(b) => b,
        }
    }
}

impl Default for Name<'_> {
    fn default() -> Self {
        Name::Own(Bytes::new())
    }
}

impl From<Bytes> for Name<'_> {
    fn from(b: Bytes) -> Self {
        Name::Own(b)
    }
}

impl From<&'static str> for Name<'_> {
    fn from(s: &'static str) -> Self {
        Name::Own(Bytes::from_static(s.as_bytes()))
    }
}

impl std::fmt::Debug for Name<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&Bytes::copy_from_slice(self), f)
    }
}

impl PartialEq for Name<'_> {
    fn eq(&self, other: &Self) -> bool {
        self[..] == other[..]
    }
}

impl Eq for Name<'_> {}

/// A parsed `Send` whose names and payload share the frame's buffer (its names lent:
/// see [`Name`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendView<'a> {
    /// Echoed in the SendResult.
    pub request_id: u64,
    /// Recipient user name, valid UTF-8 (may be empty: the caller rejects it).
    pub to_user: Name<'a>,
    /// Recipient room, valid UTF-8 (may be empty).
    pub to_room: Bytes,
    /// The payload, a slice of the read buffer.
    pub payload: Bytes,
    /// Whether the sender asked for a SendResult.
    pub want_result: bool,
    /// Client-chosen message id (0: let the router choose).
    pub msg_id: u64,
    /// Live sessions only, never stored (`Send.ephemeral`).
    pub ephemeral: bool,
    /// The client's sequence number of this Send (`Send.client_seq`; 0: not numbered).
    pub client_seq: u64,
}

impl SendView<'_> {
    /// `to_user` as text (validated UTF-8 at parse time).
    pub fn to_user_str(&self) -> &str {
        // Parse-time validation guarantees UTF-8; fall back to "" rather than panic.
        std::str::from_utf8(&self.to_user).unwrap_or("")
    }

    /// `to_room` as text (validated UTF-8 at parse time).
    pub fn to_room_str(&self) -> &str {
        std::str::from_utf8(&self.to_room).unwrap_or("")
    }
}

/// One decoded client frame (a Send's names may be lent by the frame's buffer).
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound<'a> {
    /// The hot path: a Send, parsed without allocating.
    Send(SendView<'a>),
    /// Any other frame, decoded by prost.
    Other(client_frame::Kind),
    /// A frame with no kind set (empty body, or an unknown kind from a newer client).
    Empty,
}

const WT_VARINT: u8 = 0;
const WT_I64: u8 = 1;
const WT_LEN: u8 = 2;
const WT_START_GROUP: u8 = 3;
const WT_END_GROUP: u8 = 4;
const WT_I32: u8 = 5;

/// prost's recursion limit (`prost::RECURSION_LIMIT`): a decode starts with this budget
/// and every nested message or group takes one from it.
const PROST_RECURSION_LIMIT: u32 = 100;

/// The budget prost has left when it skips an unknown field of a message one level
/// down from the frame (a `Send` in a `ClientFrame`, a `Deliver` in a `ServerFrame`):
/// entering the nested message took one.
const NESTED_FIELD_BUDGET: u32 = PROST_RECURSION_LIMIT - 1;

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    /// A varint of one byte (tags, short lengths, small numbers) or two (the lengths of
    /// payloads from 128 B to 16 KiB) without a call; longer ones through
    /// [`Cursor::varint_slow`].
    #[inline(always)]
    fn varint(&mut self) -> Result<u64, FrameError> {
        if let Some(&b0) = self.buf.get(self.pos) {
            if b0 < 0x80 {
                self.pos += 1;
                return Ok(u64::from(b0));
            }
            if let Some(&b1) = self.buf.get(self.pos + 1) {
                if b1 < 0x80 {
                    self.pos += 2;
                    return Ok(u64::from(b0 & 0x7f) | (u64::from(b1) << 7));
                }
            }
        }
        self.varint_slow()
    }

    /// A varint that is usually several bytes long (a sequence number, a timestamp, an
    /// id): the one-load decode inline, the rest out of line.
    #[inline(always)]
    fn varint_wide(&mut self) -> Result<u64, FrameError> {
        match self.gather() {
            Some(v) => Ok(v),
            None => self.varint_slow(),
        }
    }

    /// Up to 8 bytes (values below 2^56: timestamps, message ids, sequence numbers)
    /// from one 8-byte load, without a loop per byte (the generator's Deliver decoding
    /// spent ~330 instructions a delivery in the loop of [`Cursor::varint_slow`]).
    /// `None` if fewer than 8 bytes are left or the varint is longer.
    #[inline(always)]
    fn gather(&mut self) -> Option<u64> {
        let &w = self.buf.get(self.pos..)?.first_chunk::<8>()?;
        let (v, len) = gather7(u64::from_le_bytes(w))?;
        self.pos += len;
        Some(v)
    }

    /// Moves past a varint of at most 8 bytes without decoding it (`None` if it is
    /// longer, or fewer than 8 bytes are left).
    #[inline(always)]
    fn skip_gather(&mut self) -> Option<()> {
        let &w = self.buf.get(self.pos..)?.first_chunk::<8>()?;
        let stops = !u64::from_le_bytes(w) & 0x8080_8080_8080_8080;
        if stops == 0 {
            return None;
        }
        self.pos += (stops.trailing_zeros() / 8 + 1) as usize;
        Some(())
    }

    /// A varint of two bytes or more (client sequence numbers, message ids, long
    /// lengths): one loop, no second dispatch.
    #[inline(never)]
    fn varint_slow(&mut self) -> Result<u64, FrameError> {
        if let Some(v) = self.gather() {
            return Ok(v);
        }
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        let mut value: u64 = 0;
        for (i, &b) in rest.iter().take(crate::codec::MAX_VARINT_LEN).enumerate() {
            value |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                if i == crate::codec::MAX_VARINT_LEN - 1 && b > 1 {
                    break;
                }
                self.pos += i + 1;
                return Ok(value);
            }
        }
        Err(FrameError::Malformed("bad varint".into()))
    }

    /// Returns the range of a length-delimited field's content.
    #[inline(always)]
    fn len_delimited(&mut self) -> Result<std::ops::Range<usize>, FrameError> {
        let len = self.varint()?;
        let start = self.pos;
        let end = (start as u64)
            .checked_add(len)
            .filter(|&e| e <= self.buf.len() as u64)
            .ok_or_else(|| FrameError::Malformed("field runs past the end of the frame".into()))?
            as usize;
        self.pos = end;
        Ok(start..end)
    }

    /// Skips the value of an unknown field `field` of wire type `wire_type`, exactly as
    /// prost's `skip_field` does (so both accept and refuse the same frames): groups
    /// (wire type 3) are skipped up to their matching end-group tag, nested groups
    /// included; an end-group tag of another field number, a stray end-group, wire types
    /// 6 and 7 and a value past the end are errors. `budget` is prost's recursion budget
    /// at this field: at 0 the field is refused, and each enclosing group takes one.
    fn skip(&mut self, field: u32, wire_type: u8, budget: u32) -> Result<(), FrameError> {
        if budget == 0 {
            return Err(FrameError::Malformed("groups nested too deep".into()));
        }
        let n = match wire_type {
            WT_VARINT => {
                self.varint()?;
                0
            }
            WT_I64 => 8,
            WT_I32 => 4,
            WT_LEN => {
                self.len_delimited()?;
                0
            }
            WT_START_GROUP => loop {
                let (inner, inner_wt) = self.key()?;
                if inner_wt == WT_END_GROUP {
                    if inner != field {
                        return Err(FrameError::Malformed(format!(
                            "group {field} ended by the end-group tag of field {inner}"
                        )));
                    }
                    break 0;
                }
                self.skip(inner, inner_wt, budget - 1)?;
            },
            WT_END_GROUP => {
                return Err(FrameError::Malformed(format!(
                    "end-group tag of field {field} outside a group"
                )))
            }
            _ => {
                return Err(FrameError::Malformed(format!(
                    "unsupported wire type {wire_type}"
                )))
            }
        };
        if n > self.buf.len() - self.pos {
            return Err(FrameError::Malformed(
                "field runs past the end of the frame".into(),
            ));
        }
        self.pos += n;
        Ok(())
    }

    #[inline(always)]
    fn key(&mut self) -> Result<(u32, u8), FrameError> {
        let key = self.varint()?;
        let field = key >> 3;
        if field == 0 || field > u64::from(u32::MAX >> 3) {
            return Err(FrameError::Malformed(format!(
                "invalid field number {field}"
            )));
        }
        Ok((field as u32, (key & 7) as u8))
    }
}

fn utf8(body: &Bytes, r: std::ops::Range<usize>) -> Result<Bytes, FrameError> {
    check_utf8(body, r.clone())?;
    Ok(body.slice(r))
}

fn check_utf8(body: &Bytes, r: std::ops::Range<usize>) -> Result<(), FrameError> {
    // Printable ASCII (most names) is UTF-8: one word-wide pass instead of a decode.
    if !crate::names::printable_ascii_at(body, r.clone()) {
        std::str::from_utf8(&body[r])
            .map_err(|_| FrameError::Malformed("string is not UTF-8".into()))?;
    }
    Ok(())
}

/// How [`parse_send`] makes a Send's `to_user` from its range in the buffer: lent by
/// it, or a slice of its own.
trait Namer<'a> {
    fn name(&self, r: std::ops::Range<usize>) -> Name<'a>;
}

/// Names lent by the buffer.
struct Lend<'a>(&'a Bytes);

impl<'a> Namer<'a> for Lend<'a> {
    #[inline(always)]
    fn name(&self, r: std::ops::Range<usize>) -> Name<'a> {
        Name::In(self.0, &self.0[r])
    }
}

/// Names of their own (a buffer the caller does not keep).
struct Slice<'b>(&'b Bytes);

impl<'a> Namer<'a> for Slice<'_> {
    fn name(&self, r: std::ops::Range<usize>) -> Name<'a> {
        Name::Own(self.0.slice(r))
    }
}

/// Parses the body of a `Send` message located at `range` inside `body`
/// (`body` may be a whole chunk of frames: only `range` is read). A `to_user` equal to
/// `checked` (a name found valid before, or empty) is not checked again.
fn parse_send<'a>(
    body: &Bytes,
    range: std::ops::Range<usize>,
    copy: bool,
    checked: &[u8],
    namer: impl Namer<'a>,
) -> Result<SendView<'a>, FrameError> {
    let len = range.len();
    let mut c = Cursor {
        buf: &body[..range.end],
        pos: range.start,
    };
    let mut s = SendView::default();
    while let Some(&tag) = c.buf.get(c.pos) {
        // Every field of Send has a one-byte tag: read as it is, not decoded (a tag of
        // more bytes, or field 0, goes through `key`).
        let (field, wt) = if (8..0x80).contains(&tag) {
            c.pos += 1;
            (u32::from(tag >> 3), tag & 7)
        } else {
            c.key()?
        };
        match (field, wt) {
            (1, WT_VARINT) => s.request_id = c.varint()?,
            (2, WT_LEN) => {
                let r = c.len_delimited()?;
                // The session's last recipient again (a conversation): its bytes were
                // found UTF-8 then; the check cost a Send ~100 instructions.
                if checked.is_empty() || !crate::names::name_eq(&body[r.clone()], checked) {
                    check_utf8(body, r.clone())?;
                }
                s.to_user = namer.name(r);
            }
            (3, WT_LEN) => s.to_room = utf8(body, c.len_delimited()?)?,
            (4, WT_LEN) => s.payload = body.slice(c.len_delimited()?),
            (5, WT_VARINT) => s.want_result = c.varint()? != 0,
            (6, WT_VARINT) => s.msg_id = c.varint()?,
            (7, WT_VARINT) => s.ephemeral = c.varint()? != 0,
            (8, WT_VARINT) => s.client_seq = c.varint()?,
            (1..=8, _) => {
                return Err(FrameError::Malformed(format!(
                    "field {field} has wrong wire type {wt}"
                )))
            }
            _ => c.skip(field, wt, NESTED_FIELD_BUDGET)?,
        }
    }
    unpad(&mut s.payload, len, copy);
    Ok(s)
}

/// Bytes a Send's body may hold besides its payload before the payload is copied out
/// of it: its names (at most 2 × 66) and numbers (at most 5 × 11) fit well under it.
pub const SEND_PADDING_MAX: usize = 512;

/// Copies a Send's `payload` out of its frame when asked (`copy`: a chunk mostly of
/// other bytes), or when the Send's body (`body` bytes) is mostly something else
/// (unknown fields as padding): a payload slice that is retained or queued keeps its
/// whole buffer alive, and the bounds count only the payload's bytes. A well-formed
/// Send is never copied for its own frame. In place: the view is not moved for it.
#[inline(always)]
fn unpad(payload: &mut Bytes, body: usize, copy: bool) {
    if copy || body > payload.len() + SEND_PADDING_MAX {
        *payload = Bytes::copy_from_slice(payload);
    }
}

/// Decodes a client frame body. A frame whose only field is `send` takes the
/// allocation-free path; anything else (including repeated or merged kinds) is
/// decoded by prost with full protobuf semantics.
pub fn parse_client(body: Bytes) -> Result<Inbound<'static>, FrameError> {
    let len = body.len();
    parse_client_with(&body, 0..len, false, &[], Slice(&body))
}

/// Like [`parse_client`] for the frame body at `range` inside `chunk` (see
/// `codec::split_frames`): a Send's names and payload become slices of `chunk`.
pub fn parse_client_at(
    chunk: &Bytes,
    range: std::ops::Range<usize>,
) -> Result<Inbound<'_>, FrameError> {
    parse_client_in(chunk, range, false, &[])
}

/// [`parse_client_at`]; with `copy`, a Send's payload is copied out of `chunk` (a chunk
/// mostly of other bytes: a payload slice kept from it would keep them all alive).
/// `checked`: a name already found to be UTF-8 (the session's last recipient), or
/// empty; a Send's `to_user` equal to it is not checked again (the result is the same).
#[inline]
pub fn parse_client_in<'a>(
    chunk: &'a Bytes,
    range: std::ops::Range<usize>,
    copy: bool,
    checked: &[u8],
) -> Result<Inbound<'a>, FrameError> {
    parse_client_with(chunk, range, copy, checked, Lend(chunk))
}

#[inline(always)]
fn parse_client_with<'a>(
    chunk: &Bytes,
    range: std::ops::Range<usize>,
    copy: bool,
    checked: &[u8],
    namer: impl Namer<'a>,
) -> Result<Inbound<'a>, FrameError> {
    {
        let mut c = Cursor {
            buf: &chunk[..range.end],
            pos: range.start,
        };
        if !range.is_empty() {
            let (field, wt) = c.key()?;
            if field == 2 && wt == WT_LEN {
                let r = c.len_delimited()?;
                if c.pos == range.end {
                    return Ok(Inbound::Send(parse_send(chunk, r, copy, checked, namer)?));
                }
            }
        }
    }
    let body = range.len();
    let frame = ClientFrame::decode(chunk.slice(range))?;
    Ok(match frame.kind {
        Some(client_frame::Kind::Send(s)) => {
            let mut payload = s.payload;
            unpad(&mut payload, body, copy);
            Inbound::Send(SendView {
                request_id: s.request_id,
                to_user: Name::Own(Bytes::from(s.to_user)),
                to_room: Bytes::from(s.to_room),
                payload,
                want_result: s.want_result,
                msg_id: s.msg_id,
                ephemeral: s.ephemeral,
                client_seq: s.client_seq,
            })
        }
        Some(k) => Inbound::Other(k),
        None => Inbound::Empty,
    })
}

/// The router-owned fields of one delivery.
#[derive(Debug, Clone, Copy)]
pub struct DeliverStamp<'a> {
    /// Per-session sequence number.
    pub seq: u64,
    /// Authenticated sender.
    pub from_user: &'a [u8],
    /// Room, or empty for a direct message.
    pub to_room: &'a [u8],
    /// Router clock at acceptance, µs since the Unix epoch.
    pub server_ts_us: u64,
    /// Message id.
    pub msg_id: u64,
}

/// ServerFrame field number of `deliver`.
const SERVER_FRAME_DELIVER: u64 = 3;

fn len_field_size(field: u64, len: usize) -> usize {
    if len == 0 {
        0
    } else {
        varint_len(field << 3) + varint_len(len as u64) + len
    }
}

fn varint_field_size(field: u64, v: u64) -> usize {
    if v == 0 {
        0
    } else {
        varint_len(field << 3) + varint_len(v)
    }
}

fn put_len_field(out: &mut impl BufMut, field: u64, data: &[u8]) {
    if !data.is_empty() {
        put_varint(out, (field << 3) | u64::from(WT_LEN));
        put_varint(out, data.len() as u64);
        out.put_slice(data);
    }
}

fn put_varint_field(out: &mut impl BufMut, field: u64, v: u64) {
    if v != 0 {
        put_varint(out, field << 3);
        put_varint(out, v);
    }
}

/// Size of the header [`put_deliver_header`] writes (everything but the payload).
pub fn deliver_header_len(stamp: &DeliverStamp<'_>, payload_len: usize) -> usize {
    let (inner, _) = deliver_sizes(stamp, payload_len);
    let outer = varint_len(SERVER_FRAME_DELIVER << 3) + varint_len(inner as u64) + inner;
    varint_len(outer as u64) + outer - payload_len
}

fn deliver_sizes(stamp: &DeliverStamp<'_>, payload_len: usize) -> (usize, usize) {
    let inner = varint_field_size(1, stamp.seq)
        + len_field_size(2, stamp.from_user.len())
        + len_field_size(3, stamp.to_room.len())
        + len_field_size(4, payload_len)
        + varint_field_size(5, stamp.server_ts_us)
        + varint_field_size(6, stamp.msg_id);
    (inner, 0)
}

/// Longest copy [`copy_short`] makes without a call.
pub const SHORT_COPY_MAX: usize = 128;

/// Copies `n` bytes from `src` to `dst`, as `std::ptr::copy_nonoverlapping` does, but
/// up to [`SHORT_COPY_MAX`] bytes without a `memcpy` call: two fixed-size moves of the
/// smallest power of two `k` (4 to 64) with `k <= n <= 2k`, the first `k` bytes and the
/// last `k` (they overlap when `n < 2k`), or 1 to 3 single bytes. (A 64-byte payload is
/// two 32-byte moves, not one 64-byte move done twice.) A payload or name of a
/// small message is copied in ~10 inlined instructions, where the call cost ~20 with its
/// setup (`bench/ir.sh`). Only the `n` bytes at each end are read and written.
///
/// # Safety
/// As for `copy_nonoverlapping`: `src` valid for reads and `dst` for writes of `n`
/// bytes, the two ranges not overlapping.
#[inline(always)]
pub unsafe fn copy_short(src: *const u8, dst: *mut u8, n: usize) {
    // SAFETY (each branch): the moves read `[0, k)` and `[n - k, n)` of `src` and write
    // the same of `dst`, within the `n` bytes as `k <= n`; single bytes at 0, n / 2 and
    // n - 1 likewise. The caller guarantees those `n` bytes.
    unsafe {
        if n > 32 {
            if n > 64 {
                if n > SHORT_COPY_MAX {
                    std::ptr::copy_nonoverlapping(src, dst, n);
                } else {
                    two_moves::<64>(src, dst, n);
                }
            } else {
                two_moves::<32>(src, dst, n);
            }
        } else if n >= 16 {
            two_moves::<16>(src, dst, n);
        } else if n >= 8 {
            two_moves::<8>(src, dst, n);
        } else if n >= 4 {
            two_moves::<4>(src, dst, n);
        } else if n > 0 {
            dst.write(src.read());
            dst.add(n / 2).write(src.add(n / 2).read());
            dst.add(n - 1).write(src.add(n - 1).read());
        }
    }
}

/// The first `K` and the last `K` of `n` bytes (`K <= n`), both loaded before either
/// store.
///
/// # Safety
/// As [`copy_short`]'s, and `K <= n`.
#[inline(always)]
unsafe fn two_moves<const K: usize>(src: *const u8, dst: *mut u8, n: usize) {
    debug_assert!(K <= n);
    // SAFETY: `[0, K)` and `[n - K, n)` lie within the `n` bytes the caller guarantees
    // at both pointers (`K <= n`); unaligned reads and writes of byte arrays.
    unsafe {
        let head = src.cast::<[u8; K]>().read_unaligned();
        let tail = src.add(n - K).cast::<[u8; K]>().read_unaligned();
        dst.cast::<[u8; K]>().write_unaligned(head);
        dst.add(n - K).cast::<[u8; K]>().write_unaligned(tail);
    }
}

/// The longest prefix of a Deliver frame: its length (10), the ServerFrame tag (1), the
/// Deliver's length (10).
const PREFIX_MAX: usize = 21;

/// The most bytes [`write_deliver_fields`] writes besides the names: four tagged varints
/// of at most 11 bytes (a varint's own stores never pass its tenth byte) and the names'
/// tags and one-byte lengths.
const FIELDS_MAX: usize = 4 * 11 + 4;

/// Writes a Deliver's fields at `f` (seq, sender, room, time, id, then the payload's tag
/// and length: field order differs from prost's, payload last, which protobuf decoders
/// accept); returns their length. The one place that order is written, for both header
/// writers.
///
/// # Safety
/// `f` must be valid for writes of [`FIELDS_MAX`] + the names' lengths, and neither name
/// longer than [`MAX_NAME_BYTES`] (< 128: a one-byte length).
#[inline(always)]
unsafe fn write_deliver_fields(f: *mut u8, stamp: &DeliverStamp<'_>, payload_len: usize) -> usize {
    // SAFETY: each field writes its tag and `varint_at`'s at most 10 bytes after it (or
    // a name's tag, length and bytes): within FIELDS_MAX + the names, as the caller
    // guarantees.
    unsafe {
        let mut at = 0;
        if stamp.seq != 0 {
            f.write(1 << 3);
            at = 1 + varint_at(f.add(1), stamp.seq);
        }
        for (tag, name) in [(2u8, stamp.from_user), (3, stamp.to_room)] {
            if !name.is_empty() {
                f.add(at).write((tag << 3) | WT_LEN);
                f.add(at + 1).write(name.len() as u8);
                copy_short(name.as_ptr(), f.add(at + 2), name.len());
                at += 2 + name.len();
            }
        }
        if stamp.server_ts_us != 0 {
            f.add(at).write(5 << 3);
            at += 1 + varint_at(f.add(at + 1), stamp.server_ts_us);
        }
        if stamp.msg_id != 0 {
            f.add(at).write(6 << 3);
            at += 1 + varint_at(f.add(at + 1), stamp.msg_id);
        }
        if payload_len != 0 {
            f.add(at).write((4 << 3) | WT_LEN);
            at += 1 + varint_at(f.add(at + 1), payload_len as u64);
        }
        at
    }
}

/// Writes a length-delimited `ServerFrame{deliver: Deliver{..}}` up to and
/// including the payload's tag and length. The caller must follow it with exactly
/// `payload_len` payload bytes.
pub fn put_deliver_header(out: &mut impl BufMut, stamp: &DeliverStamp<'_>, payload_len: usize) {
    if stamp.from_user.len() > MAX_NAME_BYTES || stamp.to_room.len() > MAX_NAME_BYTES {
        return put_deliver_header_long(out, stamp, payload_len);
    }
    // Built on the stack in one pass and appended with one slice: the fields first,
    // from PREFIX_MAX on, then the three prefix varints (whose values depend on the
    // fields' length) right before them. No size pass over the fields.
    let mut b = [0u8; PREFIX_MAX + FIELDS_MAX + 2 * MAX_NAME_BYTES];
    // SAFETY: `b` has FIELDS_MAX + 2 * MAX_NAME_BYTES bytes from PREFIX_MAX on, and the
    // names are at most MAX_NAME_BYTES (checked above).
    let n = PREFIX_MAX
        + unsafe { write_deliver_fields(b.as_mut_ptr().add(PREFIX_MAX), stamp, payload_len) };
    let inner = (n - PREFIX_MAX) as u64 + payload_len as u64;
    let outer = 1 + varint_len(inner) as u64 + inner;
    let mut p = [0u8; PREFIX_MAX + 8];
    let mut pn = varint_into(&mut p, 0, outer);
    p[pn] = ((SERVER_FRAME_DELIVER << 3) as u8) | WT_LEN;
    pn = varint_into(&mut p, pn + 1, inner);
    let from = PREFIX_MAX - pn;
    b[from..PREFIX_MAX].copy_from_slice(&p[..pn]);
    out.put_slice(&b[from..n]);
}

/// Spare bytes [`put_deliver_header_bytes`] writes at most past the end of `out` besides
/// the names: the longest prefix and the longest fields. Callers that manage their
/// buffer's growth (`OutBuf::ensure`) reserve this much plus the names first, so that no
/// write reallocates.
pub const DELIVER_HEADER_ROOM: usize = PREFIX_MAX + FIELDS_MAX;

/// [`put_deliver_header`] into a `BytesMut`, written in place in its spare capacity: the
/// fields from where the prefix (the frame's length, its tag and the Deliver's length)
/// is expected to end, then the prefix before them. The expectation comes from the
/// payload's length and the fields' longest (no size pass over the fields); when the
/// prefix turns out shorter (a frame whose lengths are near a varint boundary) the
/// fields move back to it. The generic version builds the header in a stack buffer
/// (197 bytes zeroed) and copies it into `out`. The bytes are the same.
pub fn put_deliver_header_bytes(out: &mut BytesMut, stamp: &DeliverStamp<'_>, payload_len: usize) {
    let names = stamp.from_user.len() + stamp.to_room.len();
    if stamp.from_user.len() > MAX_NAME_BYTES || stamp.to_room.len() > MAX_NAME_BYTES {
        return put_deliver_header(out, stamp, payload_len);
    }
    // The prefix of the longest fields is at least as long as the real one's (lengths
    // only grow with the fields).
    let inner_max = (FIELDS_MAX + names + payload_len) as u64;
    let guess = 2 * varint_len(inner_max + 1 + varint_len(inner_max) as u64) + 1;
    out.reserve(DELIVER_HEADER_ROOM + names);
    let start = out.len();
    let p = out.spare_capacity_mut().as_mut_ptr().cast::<u8>();
    // SAFETY: `reserve` left DELIVER_HEADER_ROOM + the names' bytes of spare capacity
    // from `p`. The fields go from `guess` (at most PREFIX_MAX: two varints of a `u64`
    // and a tag) and take at most FIELDS_MAX + the names (`write_deliver_fields`). The
    // prefix goes right before the fields' final place, from `p`, and `copy` moves the
    // fields within what was written. So every byte `set_len` covers was written (the
    // tests check the bytes against `put_deliver_header` at every prefix length).
    unsafe {
        let f = p.add(guess);
        let at = write_deliver_fields(f, stamp, payload_len);
        let inner = (at + payload_len) as u64;
        let outer = 1 + varint_len(inner) as u64 + inner;
        let prefix = varint_len(outer) + 1 + varint_len(inner);
        debug_assert!(prefix <= guess, "the prefix is never longer than guessed");
        if prefix != guess {
            std::ptr::copy(f, p.add(prefix), at);
        }
        // The prefix last, before the fields. `varint_at` stores exactly the varint's
        // bytes below 2^14 (frames under 16 KiB); past that its 8-byte store could land
        // on the fields, so the prefix is built in a small buffer first.
        let tag = ((SERVER_FRAME_DELIVER << 3) as u8) | WT_LEN;
        if outer < 1 << 14 {
            let n = varint_at(p, outer);
            p.add(n).write(tag);
            varint_at(p.add(n + 1), inner);
        } else {
            let mut pre = [0u8; PREFIX_MAX + 8];
            let mut n = varint_into(&mut pre, 0, outer);
            pre[n] = tag;
            n = varint_into(&mut pre, n + 1, inner);
            std::ptr::copy_nonoverlapping(pre.as_ptr(), p, n);
        }
        out.set_len(start + prefix + at);
    }
}

/// [`put_deliver_header`] for names longer than [`MAX_NAME_BYTES`] (never on the wire:
/// names are checked when they arrive; kept for completeness).
#[cold]
fn put_deliver_header_long(out: &mut impl BufMut, stamp: &DeliverStamp<'_>, payload_len: usize) {
    let (inner, _) = deliver_sizes(stamp, payload_len);
    let outer = varint_len(SERVER_FRAME_DELIVER << 3) + varint_len(inner as u64) + inner;
    put_varint(out, outer as u64);
    put_varint(out, (SERVER_FRAME_DELIVER << 3) | u64::from(WT_LEN));
    put_varint(out, inner as u64);
    put_varint_field(out, 1, stamp.seq);
    put_len_field(out, 2, stamp.from_user);
    put_len_field(out, 3, stamp.to_room);
    put_varint_field(out, 5, stamp.server_ts_us);
    put_varint_field(out, 6, stamp.msg_id);
    if payload_len != 0 {
        put_varint(out, (4 << 3) | u64::from(WT_LEN));
        put_varint(out, payload_len as u64);
    }
}

/// Bytes of the seq slot in a [`DeliverTemplate`]: a varint padded to 5 bytes, which
/// holds any seq below 2^35.
pub const SEQ_SLOT: usize = 5;

/// Largest seq a [`DeliverTemplate`] can carry.
pub const TEMPLATE_MAX_SEQ: u64 = (1 << 35) - 1;

/// The header of one Deliver for many sessions (a room message on one shard): encoded
/// once, copied per session with its `seq` written into a fixed-width slot. The seq is
/// a non-minimal (padded) varint, which protobuf decoders accept; every other byte is
/// the same for every session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliverTemplate {
    /// The header bytes (length prefix up to and including the payload's length).
    pub bytes: Vec<u8>,
    /// Where the seq slot starts in `bytes`.
    pub seq_at: usize,
}

impl DeliverTemplate {
    /// The header for `stamp` (its `seq` is ignored) followed by `payload_len` bytes.
    pub fn new(stamp: &DeliverStamp<'_>, payload_len: usize) -> Self {
        let inner = 1
            + SEQ_SLOT
            + len_field_size(2, stamp.from_user.len())
            + len_field_size(3, stamp.to_room.len())
            + len_field_size(4, payload_len)
            + varint_field_size(5, stamp.server_ts_us)
            + varint_field_size(6, stamp.msg_id);
        let outer = varint_len(SERVER_FRAME_DELIVER << 3) + varint_len(inner as u64) + inner;
        // The header only: `outer` counts the payload too.
        let mut out = Vec::with_capacity(outer - payload_len + 10);
        put_varint(&mut out, outer as u64);
        put_varint(&mut out, (SERVER_FRAME_DELIVER << 3) | u64::from(WT_LEN));
        put_varint(&mut out, inner as u64);
        put_len_field(&mut out, 2, stamp.from_user);
        put_len_field(&mut out, 3, stamp.to_room);
        put_varint_field(&mut out, 5, stamp.server_ts_us);
        put_varint_field(&mut out, 6, stamp.msg_id);
        out.push(1 << 3);
        let seq_at = out.len();
        out.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x00]);
        if payload_len != 0 {
            put_varint(&mut out, (4 << 3) | u64::from(WT_LEN));
            put_varint(&mut out, payload_len as u64);
        }
        DeliverTemplate { bytes: out, seq_at }
    }

    /// Writes `seq` into the slot of a copy of the template (`header` starts where the
    /// copy starts). `seq` must be at most [`TEMPLATE_MAX_SEQ`].
    #[inline]
    pub fn put_seq(&self, header: &mut [u8], seq: u64) {
        header[self.seq_at..self.seq_at + SEQ_SLOT].copy_from_slice(&Self::seq_slot(seq));
    }

    /// The bytes of the seq slot for `seq` (at most [`TEMPLATE_MAX_SEQ`]): the five
    /// 7-bit groups in five bytes, continuation bits on all but the last (a padded
    /// varint), computed without a loop.
    #[inline(always)]
    pub fn seq_slot(seq: u64) -> [u8; SEQ_SLOT] {
        debug_assert!(seq <= TEMPLATE_MAX_SEQ);
        let b = (spread7(seq & TEMPLATE_MAX_SEQ) | 0x8080_8080).to_le_bytes();
        [b[0], b[1], b[2], b[3], b[4]]
    }
}

/// A server frame seen without allocating: Delivers are parsed in place (the
/// load engine's receive path); anything else is left for prost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerView<'a> {
    /// A Deliver, fields borrowed from the frame body.
    Deliver {
        /// Per-session sequence number.
        seq: u64,
        /// Sender.
        from_user: &'a [u8],
        /// Room, empty for direct messages.
        to_room: &'a [u8],
        /// Payload.
        payload: &'a [u8],
        /// Router timestamp.
        server_ts_us: u64,
        /// Message id.
        msg_id: u64,
    },
    /// Any other frame: decode `body` with prost if needed.
    Other,
}

/// Looks at a server frame body; parses a Deliver in place.
#[inline(always)]
pub fn parse_server(body: &[u8]) -> Result<ServerView<'_>, FrameError> {
    let mut c = Cursor { buf: body, pos: 0 };
    if body.is_empty() {
        return Ok(ServerView::Other);
    }
    let (field, wt) = c.key()?;
    if field != SERVER_FRAME_DELIVER as u32 || wt != WT_LEN {
        return Ok(ServerView::Other);
    }
    let r = c.len_delimited()?;
    if c.pos != body.len() {
        return Ok(ServerView::Other);
    }
    if let Some(view) = deliver_one_byte_tags(&body[..r.end], r.start) {
        return Ok(view);
    }
    let mut d = Cursor {
        buf: &body[..r.end],
        pos: r.start,
    };
    let mut v = DeliverFields::default();
    while d.pos < r.end {
        let (f, wt) = d.key()?;
        match (f, wt) {
            (1, WT_VARINT) => v.seq = d.varint()?,
            (2, WT_LEN) => v.from = &body[d.len_delimited()?],
            (3, WT_LEN) => v.room = &body[d.len_delimited()?],
            (4, WT_LEN) => v.payload = &body[d.len_delimited()?],
            (5, WT_VARINT) => v.ts = d.varint()?,
            (6, WT_VARINT) => v.id = d.varint()?,
            // Ephemeral deliveries and copies of one's own messages (rare): left to prost.
            (7 | 8, WT_VARINT) | (9, WT_LEN) => return Ok(ServerView::Other),
            _ => d.skip(f, wt, NESTED_FIELD_BUDGET)?,
        }
    }
    Ok(v.view())
}

/// The fields of a Deliver [`parse_server`] reads.
#[derive(Default)]
struct DeliverFields<'a> {
    seq: u64,
    from: &'a [u8],
    room: &'a [u8],
    payload: &'a [u8],
    ts: u64,
    id: u64,
}

impl<'a> DeliverFields<'a> {
    fn view(self) -> ServerView<'a> {
        ServerView::Deliver {
            seq: self.seq,
            from_user: self.from,
            to_room: self.room,
            payload: self.payload,
            server_ts_us: self.ts,
            msg_id: self.id,
        }
    }
}

/// The `seq` and payload of a Deliver laid out as the router writes it (the ServerFrame
/// tag in one byte; then seq, sender, room, time, id, each at most once and in that
/// order, any of them absent, the seq possibly after the id instead (a room message's
/// header template), and the payload last), without reading the fields it does
/// not return: the names are skipped by their length, the time and the id by their
/// last byte. What a load generator or a benchmark needs of each delivery (the
/// generator's full decode was 345 of its 439 instructions a delivery at fan-out 1 → 64).
///
/// `None` for any other body, whatever it holds (another order, another field, a
/// varint of more than 8 bytes, a frame that is not a Deliver): [`parse_server`] then
/// decides, so that both give the same seq and payload whenever this one answers.
#[inline(always)]
pub fn deliver_seq_payload(body: &[u8]) -> Option<(u64, &[u8])> {
    if *body.first()? != ((SERVER_FRAME_DELIVER << 3) as u8 | WT_LEN) {
        return None;
    }
    let mut c = Cursor { buf: body, pos: 1 };
    let inner = c.len_delimited().ok()?;
    if inner.end != body.len() {
        return None;
    }
    c.pos = inner.start;
    // The seq comes first, or (a room message's header template) right before the
    // payload: once at most.
    let mut seq = None;
    if body.get(c.pos) == Some(&0x08) {
        c.pos += 1;
        seq = Some(c.gather()?);
    }
    for tag in [0x12, 0x1a] {
        if body.get(c.pos) == Some(&tag) {
            c.pos += 1;
            c.len_delimited().ok()?;
        }
    }
    for tag in [0x28, 0x30] {
        if body.get(c.pos) == Some(&tag) {
            c.pos += 1;
            c.skip_gather()?;
        }
    }
    if seq.is_none() && body.get(c.pos) == Some(&0x08) {
        c.pos += 1;
        seq = Some(c.gather()?);
    }
    let seq = seq.unwrap_or(0);
    match body.get(c.pos) {
        None => Some((seq, &[])),
        Some(&0x22) => {
            c.pos += 1;
            let r = c.len_delimited().ok()?;
            (r.end == body.len()).then(|| (seq, &body[r]))
        }
        Some(_) => None,
    }
}

/// [`parse_server`]'s Deliver fields when every tag is one of the six it knows, in any
/// order (each a single byte): one byte compared per field instead of a key decoded
/// and matched. `None` for anything else (another field, a group, a malformed
/// value): the general loop then decides, so both accept and refuse the same frames.
#[inline(always)]
fn deliver_one_byte_tags(body: &[u8], start: usize) -> Option<ServerView<'_>> {
    let mut d = Cursor {
        buf: body,
        pos: start,
    };
    let mut v = DeliverFields::default();
    while let Some(&tag) = body.get(d.pos) {
        d.pos += 1;
        match tag {
            0x08 => v.seq = d.varint_wide().ok()?,
            0x12 => v.from = &body[d.len_delimited().ok()?],
            0x1a => v.room = &body[d.len_delimited().ok()?],
            0x22 => v.payload = &body[d.len_delimited().ok()?],
            0x28 => v.ts = d.varint_wide().ok()?,
            0x30 => v.id = d.varint_wide().ok()?,
            _ => return None,
        }
    }
    Some(v.view())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode_server, encode_frame, next_frame};
    use crate::send::{put_send_header, SendHeader, Target};
    use crate::v1::{server_frame, Deliver, Login, Send, ServerFrame};
    use bytes::BytesMut;

    #[test]
    fn a_lent_name_becomes_bytes_of_its_buffer_or_a_copy() {
        let buf = Bytes::from_static(b"hello bob");
        let n = Name::In(&buf, &buf[6..]);
        let b = n.to_bytes();
        assert_eq!(&b[..], b"bob");
        assert_eq!(
            b.as_ptr(),
            buf[6..].as_ptr(),
            "a slice of the buffer, not a copy"
        );
        // A slice of another buffer (a caller's mistake) is copied, not a panic.
        let other = Bytes::from_static(b"ann");
        assert_eq!(&Name::In(&buf, &other[..]).to_bytes()[..], b"ann");
        assert!(Name::In(&buf, &[]).to_bytes().is_empty());
    }

    #[test]
    fn short_copies_are_exact_at_every_length_and_touch_nothing_around() {
        // Every length up to past the inline limit (each move size's thresholds: 1-3,
        // 4, 7, 8, 15, 16, 31, 32, 63, 64, 127, 128, then the `memcpy` path), at
        // offsets that leave both ends unaligned.
        let src: Vec<u8> = (0..400u32).map(|i| (i * 7 + 3) as u8).collect();
        for n in 0..=SHORT_COPY_MAX + 40 {
            for (so, d_off) in [(0, 0), (1, 3), (5, 17)] {
                let mut dst = vec![0xEEu8; n + 48];
                // SAFETY: `src` has `so + n <= 5 + 168` bytes, `dst` `d_off + n` and 48
                // more; the two are separate allocations.
                unsafe { copy_short(src.as_ptr().add(so), dst.as_mut_ptr().add(d_off), n) };
                assert_eq!(&dst[d_off..d_off + n], &src[so..so + n], "n {n}");
                assert!(dst[..d_off].iter().all(|&b| b == 0xEE), "n {n}: before");
                assert!(dst[d_off + n..].iter().all(|&b| b == 0xEE), "n {n}: after");
            }
        }
    }

    #[test]
    fn varints_decode_the_same_from_one_load_as_byte_by_byte() {
        let mut values: Vec<u64> = vec![0, 1, 127, 128, u64::MAX, 1_764_000_000_000_000];
        for k in 1..64 {
            values.extend([(1u64 << k) - 1, 1u64 << k, (1u64 << k) + 1]);
        }
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            values.push(x >> (x % 64));
        }
        for v in values {
            let mut buf = Vec::new();
            crate::codec::put_varint(&mut buf, v);
            let n = buf.len();
            // Followed by other bytes (the one-load path), and alone at the end of the
            // buffer (the loop).
            for tail in [&[0xffu8; 9][..], &[][..]] {
                let mut b = buf.clone();
                b.extend_from_slice(tail);
                let mut c = Cursor { buf: &b, pos: 0 };
                assert_eq!(c.varint().unwrap(), v, "{v}");
                assert_eq!(c.pos, n, "{v}");
            }
            // Cut short: an error, never a value.
            let mut c = Cursor {
                buf: &buf[..n - 1],
                pos: 0,
            };
            assert!(c.varint().is_err() || n == 1, "{v}");
        }
        // Eight continuation bytes then the end: the loop, which refuses an 11th byte.
        let b = [0xffu8; 12];
        assert!(Cursor { buf: &b, pos: 0 }.varint().is_err());
    }

    fn send_frame(s: Send) -> Bytes {
        ClientFrame {
            kind: Some(client_frame::Kind::Send(s)),
        }
        .encode_to_vec()
        .into()
    }

    /// A `to_user` equal to the name already checked parses as it would unchecked; any
    /// other is checked (invalid UTF-8 is refused whatever was checked before).
    #[test]
    fn a_checked_recipient_parses_the_same_and_others_are_checked() {
        let to_bob = send_frame(Send {
            to_user: "bob".into(),
            payload: b"hi".to_vec().into(),
            ..Default::default()
        });
        let r = 0..to_bob.len();
        for checked in [&b""[..], b"bob", b"bo", b"bobby"] {
            let Inbound::Send(v) = parse_client_in(&to_bob, r.clone(), false, checked).unwrap()
            else {
                panic!("not a send")
            };
            assert_eq!((&v.to_user[..], &v.payload[..]), (&b"bob"[..], &b"hi"[..]));
        }
        // A Send (field 2, 4 bytes) whose to_user (field 2) is 0xff 0xfe: not UTF-8.
        let bad = Bytes::from_static(&[0x12, 4, 0x12, 2, 0xff, 0xfe]);
        for checked in [&b""[..], b"bob"] {
            assert!(parse_client_in(&bad, 0..bad.len(), false, checked).is_err());
        }
    }

    #[test]
    fn a_sends_payload_is_copied_out_of_its_chunk_when_asked() {
        let mut chunk = BytesMut::new();
        for (to, n) in [("bob", 10usize), ("al", 300), ("cy", 0)] {
            let f = ClientFrame {
                kind: Some(client_frame::Kind::Send(Send {
                    to_user: to.into(),
                    payload: Bytes::from(vec![1u8; n]),
                    msg_id: 7,
                    ..Default::default()
                })),
            };
            encode_frame(&f, &mut chunk);
        }
        let ping = ClientFrame {
            kind: Some(client_frame::Kind::Ping(crate::v1::Ping { nonce: 3 })),
        };
        encode_frame(&ping, &mut chunk);
        // Copied when asked, equal either way.
        let chunk = chunk.freeze();
        let r = crate::codec::frames(&chunk).nth(1).unwrap();
        for copy in [false, true] {
            let Inbound::Send(v) = parse_client_in(&chunk, r.clone(), copy, &[]).unwrap() else {
                panic!("not a send")
            };
            assert_eq!(v.payload.len(), 300);
            assert_eq!(chunk.as_ptr_range().contains(&v.payload.as_ptr()), !copy);
        }
    }

    #[test]
    fn a_padded_sends_payload_is_copied_out_of_its_frame_and_a_plain_ones_is_not() {
        let send = Send {
            to_user: "bob".into(),
            payload: Bytes::from(vec![7u8; 300]),
            msg_id: 5,
            ..Default::default()
        };
        // Plain: the payload is a slice of the frame.
        let plain = send_frame(send.clone());
        let range = 0..plain.len();
        let Inbound::Send(v) = parse_client_at(&plain, range).unwrap() else {
            panic!("not a send")
        };
        assert!(plain.as_ptr_range().contains(&v.payload.as_ptr()));
        // The same Send with 64 KiB of an unknown field: equal, but copied out, by the
        // hand parser (send alone in the frame) and by prost (another field after it).
        let mut body = send.encode_to_vec();
        put_varint(&mut body, (99 << 3) | u64::from(WT_LEN));
        put_varint(&mut body, 65_536);
        body.resize(body.len() + 65_536, 0xAB);
        // Field 1000 (varint) of ClientFrame: not one this version knows.
        let mut unknown = Vec::new();
        put_varint(&mut unknown, 1000 << 3);
        unknown.push(1);
        for extra in [&[][..], &unknown[..]] {
            let mut frame = Vec::new();
            put_varint(&mut frame, (2 << 3) | u64::from(WT_LEN));
            put_varint(&mut frame, body.len() as u64);
            frame.extend_from_slice(&body);
            frame.extend_from_slice(extra);
            let frame = Bytes::from(frame);
            let Inbound::Send(p) = parse_client_at(&frame, 0..frame.len()).unwrap() else {
                panic!("not a send")
            };
            assert_eq!(
                (&p.to_user[..], &p.payload, p.msg_id),
                (&b"bob"[..], &send.payload, 5)
            );
            assert!(!frame.as_ptr_range().contains(&p.payload.as_ptr()));
        }
    }

    #[test]
    fn ephemeral_and_outgoing_delivers_are_left_to_prost() {
        for d in [
            Deliver {
                seq: 0,
                from_user: "al".into(),
                ephemeral: true,
                ..Default::default()
            },
            Deliver {
                from_user: "al".into(),
                outgoing: true,
                to_user: "bo".into(),
                ..Default::default()
            },
        ] {
            let body = ServerFrame {
                kind: Some(server_frame::Kind::Deliver(d)),
            }
            .encode_to_vec();
            assert_eq!(parse_server(&body), Ok(ServerView::Other));
        }
    }

    #[test]
    fn fast_send_matches_prost() {
        let s = Send {
            request_id: 99,
            to_user: "bob".into(),
            to_room: String::new(),
            payload: Bytes::from_static(b"hello"),
            want_result: true,
            msg_id: 1234567,
            ephemeral: true,
            client_seq: 1 << 40,
        };
        let body = send_frame(s.clone());
        let Inbound::Send(v) = parse_client(body.clone()).unwrap() else {
            panic!("not a send")
        };
        assert!(v.ephemeral);
        assert_eq!(v.request_id, 99);
        assert_eq!(&v.to_user[..], b"bob");
        assert_eq!(&v.payload[..], b"hello");
        assert!(v.want_result);
        assert_eq!(v.msg_id, 1234567);
        assert_eq!(v.client_seq, 1 << 40);
        // payload is a slice of the frame body: no copy.
        let p = v.payload.as_ptr() as usize;
        assert!(p >= body.as_ptr() as usize && p + 5 <= body.as_ptr() as usize + body.len());
    }

    #[test]
    fn unknown_fields_in_send_are_skipped_and_never_forwarded() {
        // A client appends Deliver.from_user (field 2 of Deliver) under an unused
        // Send field number 9, plus fixed32/fixed64 junk.
        let mut inner = Send {
            to_user: "bob".into(),
            payload: Bytes::from_static(b"p"),
            ..Default::default()
        }
        .encode_to_vec();
        inner.extend_from_slice(&[(9 << 3) | 2, 3, b'e', b'v', b'e']);
        inner.extend_from_slice(&[(10 << 3) | 5, 1, 2, 3, 4]);
        inner.extend_from_slice(&[(11 << 3) | 1, 1, 2, 3, 4, 5, 6, 7, 8]);
        let mut body = vec![(2 << 3) | 2];
        put_varint(&mut body, inner.len() as u64);
        body.extend_from_slice(&inner);
        let Inbound::Send(v) = parse_client(body.into()).unwrap() else {
            panic!()
        };
        assert_eq!(&v.to_user[..], b"bob");
        assert_eq!(&v.payload[..], b"p");
    }

    #[test]
    fn malformed_send_is_an_error_not_a_panic() {
        let good = send_frame(Send {
            to_user: "bob".into(),
            payload: Bytes::from_static(b"xyz"),
            ..Default::default()
        });
        // Every truncation of a valid frame either decodes or errors, never panics.
        for cut in 0..good.len() {
            let _ = parse_client(good.slice(..cut));
        }
        // Invalid UTF-8 in to_user.
        let mut inner = vec![(2 << 3) | 2, 2, 0xff, 0xfe];
        let mut body = vec![(2 << 3) | 2, inner.len() as u8];
        body.append(&mut inner);
        assert!(parse_client(body.into()).is_err());
        // Field number 0.
        assert!(parse_client(Bytes::from_static(&[0x02, 0x00])).is_err());
    }

    #[test]
    fn a_send_from_the_encoder_parses() {
        let mut out = BytesMut::new();
        let h = SendHeader {
            msg_id: 77,
            ..SendHeader::to(Target::User("bob"))
        };
        put_send_header(&mut out, &h, 3);
        out.extend_from_slice(b"xyz");
        let body = next_frame(&mut out, 1 << 20).unwrap().unwrap();
        let Inbound::Send(v) = parse_client(body).unwrap() else {
            panic!()
        };
        assert_eq!(
            (&v.to_user[..], &v.payload[..], v.msg_id),
            (&b"bob"[..], &b"xyz"[..], 77)
        );
        assert!(matches!(
            parse_server(b"\x2a\x00").unwrap(),
            ServerView::Other
        ));
    }

    #[test]
    fn other_frames_go_through_prost() {
        let f = ClientFrame {
            kind: Some(client_frame::Kind::Login(Login {
                user: "a".into(),
                ..Default::default()
            })),
        };
        let got = parse_client(f.encode_to_vec().into()).unwrap();
        assert_eq!(got, Inbound::Other(f.kind.unwrap()));
        assert_eq!(parse_client(Bytes::new()).unwrap(), Inbound::Empty);
    }

    /// Calls `f` with stamps of every name length class (none, short, the longest, too
    /// long) and the values of `numbers` in each varint field.
    fn each_stamp(numbers: &[u64], mut f: impl FnMut(&DeliverStamp<'_>)) {
        let long = [b'n'; MAX_NAME_BYTES + 1];
        let names: [&[u8]; 5] = [b"", b"a", b"alice", &long[..MAX_NAME_BYTES], &long];
        for from_user in names {
            for to_room in names {
                for (i, &v) in numbers.iter().enumerate() {
                    f(&DeliverStamp {
                        seq: v,
                        from_user,
                        to_room,
                        server_ts_us: numbers[(i + 3) % numbers.len()],
                        msg_id: numbers[(i + 5) % numbers.len()],
                    });
                }
            }
        }
    }

    #[test]
    fn one_pass_deliver_header_is_byte_for_byte_the_field_by_field_one() {
        let numbers = [
            0,
            1,
            127,
            128,
            1 << 35,
            1_700_000_000_123_456,
            1 << 56,
            u64::MAX,
        ];
        each_stamp(&numbers, |stamp| {
            for payload_len in [0usize, 1, 64, 200_000] {
                let (mut fast, mut slow) = (BytesMut::new(), BytesMut::new());
                put_deliver_header(&mut fast, stamp, payload_len);
                put_deliver_header_long(&mut slow, stamp, payload_len);
                assert_eq!(fast, slow, "{stamp:?} {payload_len}");
                assert_eq!(fast.len(), deliver_header_len(stamp, payload_len));
            }
        });
    }

    #[test]
    fn in_place_deliver_header_is_byte_for_byte_the_field_by_field_one() {
        let numbers = [0, 1, 127, 128, 16_383, 16_384, 1 << 35, 1 << 56, u64::MAX];
        // Payload lengths around every prefix length (the frame's and the Deliver's
        // lengths of one, two and three bytes), where the expected prefix is too long.
        let payloads = [
            0usize, 1, 20, 50, 64, 70, 90, 100, 127, 128, 200, 16_250, 16_300, 16_383, 16_384,
            16_500, 70_000, 2_097_200,
        ];
        each_stamp(&numbers, |stamp| {
            for payload_len in payloads {
                let mut want = BytesMut::from(&b"before"[..]);
                put_deliver_header_long(&mut want, stamp, payload_len);
                // Into an empty buffer, and after bytes with just the room the callers
                // reserve: nothing reallocated, nothing else touched.
                let mut empty = BytesMut::new();
                put_deliver_header_bytes(&mut empty, stamp, payload_len);
                assert_eq!(empty, want[6..], "{stamp:?} {payload_len}");
                let names = stamp.from_user.len() + stamp.to_room.len();
                let mut tight = BytesMut::with_capacity(6 + DELIVER_HEADER_ROOM + names);
                tight.extend_from_slice(b"before");
                let at = tight.as_ptr();
                put_deliver_header_bytes(&mut tight, stamp, payload_len);
                assert_eq!(tight, want, "{stamp:?} {payload_len}");
                if stamp.from_user.len().max(stamp.to_room.len()) <= MAX_NAME_BYTES {
                    assert_eq!(tight.as_ptr(), at, "reallocated: {stamp:?}");
                }
            }
        });
    }

    #[test]
    fn deliver_header_without_names_and_every_varint_at_its_longest() {
        let stamp = DeliverStamp {
            seq: u64::MAX,
            from_user: b"",
            to_room: b"",
            server_ts_us: u64::MAX,
            msg_id: u64::MAX,
        };
        let mut out = BytesMut::new();
        put_deliver_header(&mut out, &stamp, 3);
        assert_eq!(out.len(), deliver_header_len(&stamp, 3));
        out.extend_from_slice(b"xyz");
        let body = next_frame(&mut out, usize::MAX).unwrap().unwrap();
        let Some(server_frame::Kind::Deliver(d)) = decode_server(body).unwrap().kind else {
            panic!("not a deliver")
        };
        assert_eq!(
            (d.seq, d.server_ts_us, d.msg_id),
            (u64::MAX, u64::MAX, u64::MAX)
        );
        assert_eq!(&d.payload[..], b"xyz");
    }

    #[test]
    fn deliver_header_plus_payload_decodes_as_deliver() {
        for (payload_len, seq, room, ts, id) in [
            (0usize, 1u64, &b""[..], 0u64, 0u64),
            (64, 2, b"", 1_700_000_000_000_000, 42),
            (1024, 300, b"lobby", 5, u64::MAX),
            (200_000, u64::MAX, b"r", u64::MAX, 1),
        ] {
            let payload: Vec<u8> = (0..payload_len).map(|i| i as u8).collect();
            let stamp = DeliverStamp {
                seq,
                from_user: b"alice",
                to_room: room,
                server_ts_us: ts,
                msg_id: id,
            };
            let mut out = BytesMut::new();
            put_deliver_header(&mut out, &stamp, payload.len());
            assert_eq!(out.len(), deliver_header_len(&stamp, payload.len()));
            out.extend_from_slice(&payload);
            let body = next_frame(&mut out, usize::MAX).unwrap().unwrap();
            assert!(out.is_empty());
            let want = Deliver {
                seq,
                from_user: "alice".into(),
                to_room: String::from_utf8(room.to_vec()).unwrap(),
                payload: payload.into(),
                server_ts_us: ts,
                msg_id: id,
                ..Default::default()
            };
            assert_eq!(
                decode_server(body).unwrap(),
                ServerFrame {
                    kind: Some(server_frame::Kind::Deliver(want.clone()))
                }
            );
            let mut again = BytesMut::new();
            put_deliver_header(&mut again, &stamp, payload_len);
            again.extend_from_slice(&(0..payload_len).map(|i| i as u8).collect::<Vec<u8>>());
            let body2 = next_frame(&mut again, usize::MAX).unwrap().unwrap();
            match parse_server(&body2).unwrap() {
                ServerView::Deliver {
                    seq: s2,
                    from_user,
                    to_room,
                    payload: p2,
                    server_ts_us,
                    msg_id,
                } => {
                    assert_eq!(
                        (s2, from_user, to_room, server_ts_us, msg_id),
                        (seq, &b"alice"[..], room, ts, id)
                    );
                    assert_eq!(p2.len(), payload_len);
                }
                ServerView::Other => panic!("not a deliver"),
            }
            // and prost's own encoding has the same length
            let mut viaprost = BytesMut::new();
            encode_frame(
                &ServerFrame {
                    kind: Some(server_frame::Kind::Deliver(want)),
                },
                &mut viaprost,
            );
            assert_eq!(
                viaprost.len(),
                deliver_header_len(&stamp, payload_len) + payload_len
            );
        }
    }
}

#[cfg(test)]
mod template_tests {
    use super::*;
    use crate::codec::{decode_server, next_frame};
    use crate::v1::server_frame;
    use bytes::BytesMut;

    #[test]
    fn a_template_with_its_seq_decodes_like_a_deliver() {
        let stamp = DeliverStamp {
            seq: 0,
            from_user: b"ann",
            to_room: b"lobby",
            server_ts_us: 1_700_000_000_123_456,
            msg_id: 77,
        };
        for payload in [&b""[..], b"hi", &[9u8; 300][..]] {
            let t = DeliverTemplate::new(&stamp, payload.len());
            for seq in [
                1u64,
                127,
                128,
                16_383,
                16_384,
                300_000,
                2_097_152,
                (1 << 28) - 1,
                1 << 28,
                (1 << 34) | 12_345,
                TEMPLATE_MAX_SEQ,
            ] {
                let mut frame = t.bytes.clone();
                t.put_seq(&mut frame, seq);
                frame.extend_from_slice(payload);
                let mut buf = BytesMut::from(&frame[..]);
                let body = next_frame(&mut buf, 1 << 20).unwrap().unwrap();
                assert!(buf.is_empty(), "the length prefix covers the frame exactly");
                // prost and the in-place parser both read it.
                let Some(server_frame::Kind::Deliver(d)) =
                    decode_server(body.clone()).unwrap().kind
                else {
                    panic!("not a deliver")
                };
                assert_eq!(
                    (
                        d.seq,
                        d.from_user.as_str(),
                        d.to_room.as_str(),
                        &d.payload[..]
                    ),
                    (seq, "ann", "lobby", payload)
                );
                assert_eq!((d.server_ts_us, d.msg_id), (stamp.server_ts_us, 77));
                match parse_server(&body).unwrap() {
                    ServerView::Deliver {
                        seq: s, payload: p, ..
                    } => assert_eq!((s, p), (seq, payload)),
                    ServerView::Other => panic!("not parsed in place"),
                }
            }
        }
    }
}

/// The fast parser against prost on unknown fields of every wire type, groups, the
/// recursion limit and merged fields (issue 9: both accept the same frames, with the
/// same content, or both refuse them).
#[cfg(test)]
mod conformance_tests {
    use super::*;
    use crate::fuzzing::assert_agree;
    use crate::v1::{Ping, Send};

    /// Field number of the unknown field every test adds (unused in Send and Ping).
    const F: u64 = 9;

    fn key(field: u64, wt: u8) -> Vec<u8> {
        let mut v = Vec::new();
        put_varint(&mut v, (field << 3) | u64::from(wt));
        v
    }

    /// `ClientFrame{field: message}` where the message is `inner`.
    fn wrap(field: u64, inner: &[u8]) -> Bytes {
        let mut body = key(field, WT_LEN);
        put_varint(&mut body, inner.len() as u64);
        body.extend_from_slice(inner);
        body.into()
    }

    fn send_bytes() -> Vec<u8> {
        Send {
            request_id: 3,
            to_user: "bob".into(),
            payload: Bytes::from_static(b"hi"),
            want_result: true,
            msg_id: 11,
            ..Default::default()
        }
        .encode_to_vec()
    }

    /// A Send with `extra` appended inside it, checked against prost; returns the parse.
    fn send_with(extra: &[u8]) -> Result<Inbound<'static>, FrameError> {
        let mut inner = send_bytes();
        inner.extend_from_slice(extra);
        let body = wrap(2, &inner);
        let got = parse_client(body.clone());
        assert_agree(&got, &body, &body);
        got
    }

    /// A Ping with `extra` appended inside it: prost's verdict on the same unknown bytes.
    fn ping_with(extra: &[u8]) -> bool {
        let mut inner = Ping { nonce: 5 }.encode_to_vec();
        inner.extend_from_slice(extra);
        let body = wrap(4, &inner);
        let got = parse_client(body.clone());
        assert_agree(&got, &body, &body);
        got.is_ok()
    }

    fn assert_accepted(extra: &[u8]) {
        let Ok(Inbound::Send(v)) = send_with(extra) else {
            panic!("refused a Send with unknown field {extra:02x?}");
        };
        assert_eq!(
            (
                v.request_id,
                &v.to_user[..],
                &v.payload[..],
                v.want_result,
                v.msg_id
            ),
            (3, &b"bob"[..], &b"hi"[..], true, 11)
        );
        assert!(ping_with(extra), "prost refuses a Ping with {extra:02x?}");
    }

    fn assert_refused(extra: &[u8]) {
        assert!(send_with(extra).is_err(), "accepted {extra:02x?}");
        assert!(!ping_with(extra), "prost accepts a Ping with {extra:02x?}");
    }

    /// `depth` groups of field `F` nested in one another, the innermost holding `content`.
    fn nested_groups(depth: usize, content: &[u8]) -> Vec<u8> {
        nested_groups_at(F, depth, content)
    }

    fn nested_groups_at(field: u64, depth: usize, content: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        for _ in 0..depth {
            v.extend(key(field, WT_START_GROUP));
        }
        v.extend_from_slice(content);
        for _ in 0..depth {
            v.extend(key(field, WT_END_GROUP));
        }
        v
    }

    #[test]
    fn unknown_varint_is_skipped() {
        assert_accepted(&[key(F, WT_VARINT), vec![0x96, 0x01]].concat());
        // The longest varint (10 bytes), and one byte too long.
        let mut ten = key(F, WT_VARINT);
        ten.extend_from_slice(&[0xff; 9]);
        ten.push(0x01);
        assert_accepted(&ten);
        let mut bad = key(F, WT_VARINT);
        bad.extend_from_slice(&[0xff; 9]);
        bad.push(0x02);
        assert_refused(&bad);
        assert_refused(&[key(F, WT_VARINT), vec![0x80]].concat());
    }

    #[test]
    fn unknown_fixed64_and_fixed32_are_skipped() {
        assert_accepted(&[key(F, WT_I64), vec![1; 8]].concat());
        assert_accepted(&[key(F, WT_I32), vec![1; 4]].concat());
        assert_refused(&[key(F, WT_I64), vec![1; 7]].concat());
        assert_refused(&[key(F, WT_I32), vec![1; 3]].concat());
    }

    #[test]
    fn unknown_length_delimited_is_skipped() {
        assert_accepted(&[key(F, WT_LEN), vec![3, 1, 2, 3]].concat());
        assert_accepted(&[key(F, WT_LEN), vec![0]].concat());
        assert_refused(&[key(F, WT_LEN), vec![4, 1, 2, 3]].concat());
    }

    #[test]
    fn unknown_groups_are_skipped_like_prost() {
        // Empty, with a field of every wire type, nested, and a large field number.
        assert_accepted(&nested_groups(1, &[]));
        let mut content = Vec::new();
        content.extend([key(1, WT_VARINT), vec![7]].concat());
        content.extend([key(2, WT_I64), vec![0; 8]].concat());
        content.extend([key(3, WT_LEN), vec![1, b'x']].concat());
        content.extend([key(4, WT_I32), vec![0; 4]].concat());
        content.extend(nested_groups(2, &[key(5, WT_VARINT), vec![1]].concat()));
        assert_accepted(&nested_groups(1, &content));
        assert_accepted(&nested_groups(3, &content));
        let big = (1u64 << 29) - 1;
        assert_accepted(&[key(big, WT_START_GROUP), key(big, WT_END_GROUP)].concat());
        // Two groups in a row, and a known field after a group: still read.
        let after = [
            nested_groups(1, &[]),
            nested_groups(2, &[]),
            key(2, WT_LEN),
            vec![3, b'e', b'v', b'e'],
        ]
        .concat();
        let Ok(Inbound::Send(v)) = send_with(&after) else {
            panic!("refused")
        };
        assert_eq!(
            &v.to_user[..],
            b"eve",
            "a field after a group is read (last wins)"
        );
    }

    #[test]
    fn bad_groups_are_refused_like_prost() {
        // Unterminated (at the end of the frame), also when nested.
        assert_refused(&key(F, WT_START_GROUP));
        assert_refused(&[key(F, WT_START_GROUP), key(1, WT_VARINT), vec![1]].concat());
        assert_refused(&[nested_groups(2, &[]), key(F, WT_START_GROUP)].concat());
        let mut unclosed = nested_groups(3, &[]);
        unclosed.truncate(unclosed.len() - 1);
        assert_refused(&unclosed);
        // Ended by another field's end-group tag (prost: UnexpectedEndGroupTag).
        assert_refused(&[key(F, WT_START_GROUP), key(F + 1, WT_END_GROUP)].concat());
        assert_refused(
            &[
                key(F, WT_START_GROUP),
                key(F + 1, WT_START_GROUP),
                key(F, WT_END_GROUP),
                key(F + 1, WT_END_GROUP),
            ]
            .concat(),
        );
        // A stray end-group tag.
        assert_refused(&key(F, WT_END_GROUP));
        // Invalid content: wire types 6 and 7, field 0, a truncated field.
        assert_refused(&nested_groups(1, &key(1, 6)));
        assert_refused(&nested_groups(1, &key(1, 7)));
        assert_refused(&nested_groups(1, &[0x00, 0x00]));
        assert_refused(&nested_groups(1, &[key(1, WT_LEN), vec![5]].concat()));
        // The group's own field number must fit the tag (prost: key over u32::MAX).
        let mut huge = Vec::new();
        put_varint(&mut huge, (1u64 << 32) | u64::from(WT_START_GROUP));
        assert_refused(&[huge, key(F, WT_END_GROUP)].concat());
    }

    #[test]
    fn a_group_running_past_the_send_is_refused_even_with_bytes_after_it() {
        // The Send ends inside the group; the frame goes on (prost path: more fields).
        let mut inner = send_bytes();
        inner.extend(key(F, WT_START_GROUP));
        let mut body = wrap(2, &inner).to_vec();
        body.extend(key(F, WT_END_GROUP));
        let body = Bytes::from(body);
        let got = parse_client(body.clone());
        assert_agree(&got, &body, &body);
        assert!(got.is_err());
    }

    #[test]
    fn nesting_depth_limit_is_prosts() {
        // prost allows 100 levels of recursion, the Send itself is one: the fast parser
        // must accept and refuse exactly the same depths, with and without content.
        let mut accepted = [0usize; 2];
        for (i, content) in [vec![], [key(1, WT_VARINT), vec![1]].concat()]
            .iter()
            .enumerate()
        {
            for depth in 90..=101 {
                let extra = nested_groups(depth, content);
                let ok = send_with(&extra).is_ok();
                assert_eq!(ok, ping_with(&extra), "depth {depth}");
                if ok {
                    accepted[i] = depth;
                }
            }
        }
        assert_eq!(
            accepted,
            [99, 98],
            "deepest accepted groups (empty, with a field)"
        );
    }

    #[test]
    fn merged_and_repeated_fields_follow_prost() {
        // Last scalar wins inside one Send.
        let mut inner = send_bytes();
        inner.extend(
            Send {
                request_id: 4,
                to_user: "carol".into(),
                payload: Bytes::from_static(b"second"),
                msg_id: 12,
                ..Default::default()
            }
            .encode_to_vec(),
        );
        // want_result: true then false.
        inner.extend([key(5, WT_VARINT), vec![0]].concat());
        let Ok(Inbound::Send(v)) = send_with(&inner[send_bytes().len()..]) else {
            panic!("refused")
        };
        assert_eq!(
            (
                v.request_id,
                &v.to_user[..],
                &v.payload[..],
                v.want_result,
                v.msg_id
            ),
            (4, &b"carol"[..], &b"second"[..], false, 12)
        );
        // Two `send` fields in one frame are merged by prost (the fast path steps aside).
        let mut two = wrap(2, &send_bytes()).to_vec();
        two.extend_from_slice(&wrap(2, &[key(6, WT_VARINT), vec![99]].concat()));
        let two = Bytes::from(two);
        let got = parse_client(two.clone());
        assert_agree(&got, &two, &two);
        let Ok(Inbound::Send(v)) = got else { panic!() };
        assert_eq!((&v.to_user[..], v.msg_id), (&b"bob"[..], 99));
        // A Send then a Ping: the last kind wins.
        let mut mixed = wrap(2, &send_bytes()).to_vec();
        mixed.extend_from_slice(&wrap(4, &Ping { nonce: 1 }.encode_to_vec()));
        let mixed = Bytes::from(mixed);
        let got = parse_client(mixed.clone());
        assert_agree(&got, &mixed, &mixed);
        assert!(matches!(
            got,
            Ok(Inbound::Other(client_frame::Kind::Ping(_)))
        ));
        // A group at the frame level, after the Send (prost path).
        let mut grouped = wrap(2, &send_bytes()).to_vec();
        grouped.extend(nested_groups(2, &[]));
        let grouped = Bytes::from(grouped);
        let got = parse_client(grouped.clone());
        assert_agree(&got, &grouped, &grouped);
        assert!(matches!(got, Ok(Inbound::Send(_))));
    }

    #[test]
    fn wrong_wire_type_for_a_known_field_is_refused_by_both() {
        for field in 1..=6u64 {
            for wt in [
                WT_VARINT,
                WT_I64,
                WT_LEN,
                WT_START_GROUP,
                WT_END_GROUP,
                WT_I32,
            ] {
                let mut extra = key(field, wt);
                extra.extend_from_slice(&[0; 9]);
                extra.extend(key(field, WT_END_GROUP));
                // Agreement is what is checked; the right wire type may well decode.
                let _ = send_with(&extra);
            }
        }
    }

    #[test]
    fn parse_server_skips_groups_in_a_deliver() {
        let mut inner = crate::v1::Deliver {
            seq: 4,
            from_user: "a".into(),
            ..Default::default()
        }
        .encode_to_vec();
        // Field 15: unknown to Deliver (F is one of its fields).
        inner.extend(nested_groups_at(
            15,
            2,
            &[key(1, WT_VARINT), vec![1]].concat(),
        ));
        let body = wrap(3, &inner);
        match parse_server(&body).unwrap() {
            ServerView::Deliver { seq, from_user, .. } => {
                assert_eq!((seq, from_user), (4, &b"a"[..]))
            }
            ServerView::Other => panic!("not a deliver"),
        }
        assert!(crate::codec::decode_server(body).is_ok());
    }

    /// Field (tag, encoded value) pieces of one Deliver, in the router's order: seq,
    /// sender, room, time, `msg_id`, payload ("hello").
    fn deliver_pieces(msg_id: u64) -> Vec<Vec<u8>> {
        vec![
            [vec![0x08], varint_bytes(1_234_567)].concat(),
            [&[0x12, 3][..], b"bob"].concat(),
            [&[0x1a, 4][..], b"room"].concat(),
            [vec![0x28], varint_bytes(1_764_000_000_000_000)].concat(),
            [vec![0x30], varint_bytes(msg_id)].concat(),
            [&[0x22, 5][..], b"hello"].concat(),
        ]
    }

    #[test]
    fn deliver_fields_read_the_same_in_any_order_and_unknown_ones_fall_back() {
        let pieces = deliver_pieces(u64::MAX);
        let want = ServerView::Deliver {
            seq: 1_234_567,
            from_user: b"bob",
            to_room: b"room",
            payload: b"hello",
            server_ts_us: 1_764_000_000_000_000,
            msg_id: u64::MAX,
        };
        let seq_of = |v: ServerView<'_>| match v {
            ServerView::Deliver { seq, .. } => seq,
            ServerView::Other => panic!("not a deliver"),
        };
        // Forward, reversed, and rotated: the same fields.
        for k in 0..pieces.len() {
            let mut order: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
            order.rotate_left(k);
            let body = wrap(3, &order.concat());
            assert_eq!(parse_server(&body).unwrap(), want);
            order.reverse();
            let body = wrap(3, &order.concat());
            assert_eq!(parse_server(&body).unwrap(), want);
        }
        // A field repeated: the last one counts, as in prost.
        let twice = [pieces[0].clone(), vec![0x08, 0x07], pieces[5].clone()].concat();
        assert_eq!(seq_of(parse_server(&wrap(3, &twice)).unwrap()), 7);
        // An unknown field (15, varint) in the middle: skipped by the general loop.
        let unknown = [pieces[0].clone(), vec![0x78, 0x01], pieces[5].clone()].concat();
        assert_eq!(seq_of(parse_server(&wrap(3, &unknown)).unwrap()), 1_234_567);
        // Ephemeral (field 7): not a Deliver this parser reads.
        let eph = [pieces[5].clone(), vec![0x38, 0x01]].concat();
        assert!(matches!(
            parse_server(&wrap(3, &eph)).unwrap(),
            ServerView::Other
        ));
        // A length past the end: refused, as before.
        assert!(parse_server(&wrap(3, &[0x22, 9, b'x'])).is_err());
        // A varint cut short at the end: refused.
        assert!(parse_server(&wrap(3, &[0x08, 0x80])).is_err());
    }

    /// What `deliver_seq_payload` answers must be what `parse_server` reads.
    fn same_as_parse_server(body: &[u8]) -> Option<(u64, Vec<u8>)> {
        let quick = deliver_seq_payload(body);
        if let Some((seq, payload)) = quick {
            match parse_server(body) {
                Ok(ServerView::Deliver {
                    seq: s, payload: p, ..
                }) => assert_eq!((seq, payload), (s, p), "{body:?}"),
                other => panic!("quick read {quick:?}, parse_server {other:?}: {body:?}"),
            }
        }
        quick.map(|(s, p)| (s, p.to_vec()))
    }

    #[test]
    fn the_seq_and_payload_of_the_routers_delivers_are_read_without_the_rest() {
        let stamp = DeliverStamp {
            seq: 77,
            from_user: b"alice",
            to_room: b"room-1",
            server_ts_us: 1_764_000_000_000_000,
            msg_id: (2 << 54) | 12_345,
        };
        for (stamp, payload) in [
            (stamp, &b"hello"[..]),
            (stamp, &[7u8; 300][..]),
            // The end marker: no payload field at all.
            (stamp, &b""[..]),
            (
                DeliverStamp {
                    to_room: b"",
                    ..stamp
                },
                &b"dm"[..],
            ),
            (
                DeliverStamp {
                    seq: 0,
                    msg_id: 0,
                    server_ts_us: 0,
                    ..stamp
                },
                &b"x"[..],
            ),
        ] {
            let mut out = bytes::BytesMut::new();
            put_deliver_header(&mut out, &stamp, payload.len());
            out.extend_from_slice(payload);
            let body = crate::codec::next_frame(&mut out, usize::MAX)
                .unwrap()
                .unwrap();
            assert_eq!(
                same_as_parse_server(&body),
                Some((stamp.seq, payload.to_vec()))
            );
            // The room template, with its padded seq slot.
            let t = DeliverTemplate::new(&stamp, payload.len());
            let mut b = t.bytes.clone();
            t.put_seq(&mut b, 1234);
            b.extend_from_slice(payload);
            let mut framed = bytes::BytesMut::from(&b[..]);
            let body = crate::codec::next_frame(&mut framed, usize::MAX)
                .unwrap()
                .unwrap();
            let got = same_as_parse_server(&body);
            if payload.is_empty() {
                // The seq slot is the body's last 5 bytes: too few for the one-load
                // read, left to parse_server (once per receiver: the end marker).
                assert_eq!(got, None);
            } else {
                assert_eq!(got, Some((1234, payload.to_vec())));
            }
        }
    }

    #[test]
    fn any_other_layout_is_left_to_parse_server() {
        let pieces = deliver_pieces(99);
        // In the router's order: read. Any other order, or a field twice, or one
        // unknown, or ephemeral: not (parse_server reads those).
        assert_eq!(
            same_as_parse_server(&wrap(3, &pieces.concat())),
            Some((1_234_567, b"hello".to_vec()))
        );
        let mut rev = pieces.clone();
        rev.reverse();
        assert_eq!(same_as_parse_server(&wrap(3, &rev.concat())), None);
        let twice = [pieces.concat(), pieces[5].clone()].concat();
        assert_eq!(same_as_parse_server(&wrap(3, &twice)), None);
        let unknown = [pieces[0].clone(), vec![0x78, 0x01], pieces[5].clone()].concat();
        assert_eq!(same_as_parse_server(&wrap(3, &unknown)), None);
        let eph = [pieces[5].clone(), vec![0x38, 0x01]].concat();
        assert_eq!(same_as_parse_server(&wrap(3, &eph)), None);
        // A msg_id of 10 bytes (u64::MAX): past the 8-byte skip, left to parse_server.
        let long = [
            pieces[0].clone(),
            vec![0x30],
            varint_bytes(u64::MAX),
            pieces[5].clone(),
        ];
        assert_eq!(same_as_parse_server(&wrap(3, &long.concat())), None);
        // Another server frame, and trailing bytes after the Deliver.
        assert_eq!(same_as_parse_server(&wrap(4, &pieces.concat())), None);
        let mut trailing = wrap(3, &pieces.concat()).to_vec();
        trailing.push(0);
        assert_eq!(same_as_parse_server(&trailing), None);
        // Every cut and every single-byte change of the router's layout: never an
        // answer that parse_server does not give (checked by `same_as_parse_server`).
        let body = wrap(3, &pieces.concat()).to_vec();
        for cut in 0..body.len() {
            same_as_parse_server(&body[..cut]);
        }
        for i in 0..body.len() {
            for v in [0u8, 0x01, 0x08, 0x22, 0x7f, 0x80, 0xff] {
                let mut b = body.clone();
                b[i] = v;
                same_as_parse_server(&b);
            }
        }
    }

    fn varint_bytes(v: u64) -> Vec<u8> {
        let mut b = Vec::new();
        crate::codec::put_varint(&mut b, v);
        b
    }

    #[test]
    fn lengths_of_one_two_and_three_bytes_read_as_prost_reads_them() {
        for n in [0usize, 1, 127, 128, 129, 1024, 16_383, 16_384, 70_000] {
            let payload = vec![0xA5u8; n];
            let inner = Send {
                request_id: 3,
                to_user: "bob".into(),
                payload: Bytes::from(payload.clone()),
                ..Default::default()
            }
            .encode_to_vec();
            let body = wrap(2, &inner);
            let got = parse_client(body.clone());
            assert_agree(&got, &body, &body);
            let Ok(Inbound::Send(v)) = got else {
                panic!("refused a Send of {n} bytes");
            };
            assert_eq!(&v.payload[..], &payload[..], "{n} bytes");
            // A Deliver of the same payload: the quick read and the full one agree.
            let pieces = deliver_pieces(9);
            let mut d = pieces[..5].concat();
            d.push(0x22);
            d.extend(varint_bytes(n as u64));
            d.extend_from_slice(&payload);
            let mut body = vec![0x1a];
            body.extend(varint_bytes(d.len() as u64));
            body.extend(d);
            // (It declines when fewer than 8 bytes follow the id: parse_server decides.)
            let quick = same_as_parse_server(&body);
            if n >= 8 {
                assert_eq!(quick, Some((1_234_567, payload)), "{n} bytes");
            }
        }
        // Non-minimal two-byte lengths (a continuation byte, then 0 or the rest) and a
        // length whose second byte runs past the end: as prost has them.
        for (value, accepted) in [
            (&[0x80, 0x00][..], true),
            (&[0x81, 0x00, 0x41][..], true),
            (&[0x82, 0x00, 0x41][..], false),
        ] {
            let extra = [key(F, WT_LEN), value.to_vec()].concat();
            if accepted {
                assert_accepted(&extra);
            } else {
                assert_refused(&extra);
            }
        }
        assert!(send_with(&[key(F, WT_LEN), vec![0x80]].concat()).is_err());
    }
}
