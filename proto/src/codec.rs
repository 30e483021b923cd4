//! Length-delimited framing: `varint(len) ++ message`, as protobuf's
//! `writeDelimitedTo` / `parseDelimitedFrom` produce and consume it.
//!
//! Decoding is incremental: [`next_frame`] returns `Ok(None)` until a whole frame
//! is buffered, checks the declared length against the limit *before* anything is
//! allocated for it, and hands the frame body back as a `Bytes` that shares the
//! read buffer (no copy).

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;

/// Default bound on one frame's body, in bytes (1 MiB).
pub const DEFAULT_MAX_FRAME_BYTES: usize = 1 << 20;

/// Longest varint that can encode a 64-bit value.
pub(crate) const MAX_VARINT_LEN: usize = 10;

/// Why a byte stream is not a valid sequence of frames. Any of these ends the
/// connection: the stream cannot be resynchronised.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length prefix is longer than 10 bytes or overflows 64 bits.
    #[error("malformed frame length prefix")]
    BadLength,
    /// The declared body length is over the configured limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The declared length.
        len: u64,
        /// The configured limit.
        max: usize,
    },
    /// The body is not a valid protobuf message of the expected type.
    #[error("frame does not decode: {0}")]
    Malformed(String),
}

impl FrameError {
    /// The status a peer is told: TOO_LARGE for a frame over the size limit, BAD_FRAME for
    /// bytes that are not frames.
    pub fn status(&self) -> crate::Status {
        match self {
            FrameError::TooLarge { .. } => crate::Status::TooLarge,
            _ => crate::Status::BadFrame,
        }
    }
}

impl From<prost::DecodeError> for FrameError {
    fn from(e: prost::DecodeError) -> Self {
        FrameError::Malformed(e.to_string())
    }
}

/// Reads a varint from the start of `buf`.
///
/// Returns `Ok(Some((value, bytes_used)))`, `Ok(None)` if `buf` ends inside the
/// varint, or `Err(BadLength)` if it runs past 10 bytes or overflows.
#[inline(always)]
pub fn peek_varint(buf: &[u8]) -> Result<Option<(u64, usize)>, FrameError> {
    // Fast paths, inlined at every call site: most tags and lengths on the wire take
    // one or two bytes.
    match buf {
        [b0, ..] if *b0 < 0x80 => Ok(Some((u64::from(*b0), 1))),
        [b0, b1, ..] if *b1 < 0x80 => Ok(Some((u64::from(b0 & 0x7f) | (u64::from(*b1) << 7), 2))),
        _ => peek_varint_long(buf),
    }
}

/// [`peek_varint`] past two bytes (out of line: rare on the hot paths).
#[inline(never)]
fn peek_varint_long(buf: &[u8]) -> Result<Option<(u64, usize)>, FrameError> {
    let mut value: u64 = 0;
    for (i, &b) in buf.iter().enumerate().take(MAX_VARINT_LEN) {
        if i == MAX_VARINT_LEN - 1 && b > 1 {
            return Err(FrameError::BadLength);
        }
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if buf.len() >= MAX_VARINT_LEN {
        Err(FrameError::BadLength)
    } else {
        Ok(None)
    }
}

/// Splits the next complete frame body off the front of `buf`.
///
/// `Ok(None)` means more bytes are needed (nothing is consumed). On success the
/// length prefix and body are removed from `buf` and the body is returned as a
/// `Bytes` sharing `buf`'s allocation. A declared length over `max_frame_bytes`
/// is an error as soon as the prefix is complete, before the body arrives.
pub fn next_frame(buf: &mut BytesMut, max_frame_bytes: usize) -> Result<Option<Bytes>, FrameError> {
    let Some((len, prefix)) = peek_varint(buf)? else {
        return Ok(None);
    };
    if len > max_frame_bytes as u64 {
        return Err(FrameError::TooLarge {
            len,
            max: max_frame_bytes,
        });
    }
    // `len <= max_frame_bytes: usize`, so the cast is lossless.
    let len = len as usize;
    if buf.len() - prefix < len {
        return Ok(None);
    }
    let _ = buf.split_to(prefix);
    Ok(Some(buf.split_to(len).freeze()))
}

/// Splits every complete frame off the front of `buf` at once, as one `Bytes`
/// chunk (a single reference-count operation however many frames it holds);
/// iterate it with [`frames`]. An error found after the complete frames is
/// returned beside them: the frames before it are still valid and should be
/// handled before the connection is closed.
pub fn split_frames(buf: &mut BytesMut, max_frame_bytes: usize) -> (Bytes, Option<FrameError>) {
    let mut end = 0usize;
    let mut err = None;
    loop {
        match peek_varint(&buf[end..]) {
            Ok(Some((len, prefix))) => {
                if len > max_frame_bytes as u64 {
                    err = Some(FrameError::TooLarge {
                        len,
                        max: max_frame_bytes,
                    });
                    break;
                }
                // `len <= max_frame_bytes: usize`; the sum can still overflow with a
                // limit near usize::MAX, and such a frame is never complete.
                match (end + prefix).checked_add(len as usize) {
                    Some(next) if next <= buf.len() => end = next,
                    _ => break,
                }
            }
            Ok(None) => break,
            Err(e) => {
                err = Some(e);
                break;
            }
        }
    }
    (buf.split_to(end).freeze(), err)
}

/// Iterates the frame bodies of a chunk made by [`split_frames`], as ranges.
pub fn frames(chunk: &[u8]) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
    let mut pos = 0usize;
    std::iter::from_fn(move || {
        let (len, prefix) = peek_varint(&chunk[pos..]).ok().flatten()?;
        let start = pos + prefix;
        let end = start
            .checked_add(len as usize)
            .filter(|&e| e <= chunk.len())?;
        pos = end;
        Some(start..end)
    })
}

/// Bytes still needed before `buf` holds a complete frame, if that is known yet
/// (the length prefix is complete). Lets a reader size its next read.
pub fn frame_bytes_needed(buf: &[u8]) -> Option<usize> {
    match peek_varint(buf) {
        // A declared length near u64::MAX saturates (it is over any frame limit anyway).
        Ok(Some((len, prefix))) => Some(
            usize::try_from(len)
                .unwrap_or(usize::MAX)
                .saturating_add(prefix)
                .saturating_sub(buf.len()),
        ),
        _ => None,
    }
}

/// Appends `msg` to `out` as one length-delimited frame.
pub fn encode_frame<M: Message>(msg: &M, out: &mut BytesMut) {
    let len = msg.encoded_len();
    out.reserve(len + MAX_VARINT_LEN);
    put_varint(out, len as u64);
    // `reserve` above guarantees capacity, and BytesMut grows anyway: cannot fail.
    msg.encode_raw(out);
}

/// Encodes `msg` as one length-delimited frame into a fresh buffer.
pub fn frame_to_vec<M: Message>(msg: &M) -> Vec<u8> {
    msg.encode_length_delimited_to_vec()
}

/// Appends `v` as a protobuf varint.
#[inline]
pub fn put_varint(out: &mut impl BufMut, v: u64) {
    // One bounds-checked append per varint, not one per byte.
    let mut b = [0u8; 10];
    let n = varint_into(&mut b, 0, v);
    out.put_slice(&b[..n]);
}

/// The low 56 bits of `v` as eight 7-bit groups, one per byte (little-endian), high
/// bits clear: a varint's payload bits, without continuation bits. Spread in halves, the
/// reverse of [`gather7`]: two 28-bit groups in 32-bit lanes, then 14-bit groups in
/// 16-bit lanes, then 7-bit groups in bytes (12 operations, not 23 for a shift per group:
/// a Deliver spreads three varints).
#[inline(always)]
pub(crate) fn spread7(v: u64) -> u64 {
    let x = (v & 0x0fff_ffff) | ((v << 4) & 0x0fff_ffff_0000_0000);
    let x = (x & 0x0000_3fff_0000_3fff) | ((x << 2) & 0x3fff_0000_3fff_0000);
    (x & 0x007f_007f_007f_007f) | ((x << 1) & 0x7f00_7f00_7f00_7f00)
}

/// Decodes a varint of at most 8 bytes from the little-endian load `w` of its first 8:
/// (value, bytes), or `None` if none of the 8 ends it. The reverse of [`spread7`].
#[inline(always)]
pub(crate) fn gather7(w: u64) -> Option<(u64, usize)> {
    let stops = !w & 0x8080_8080_8080_8080;
    if stops == 0 {
        return None;
    }
    let len = (stops.trailing_zeros() / 8 + 1) as usize;
    // Its `len` bytes, without their continuation bits; then the 7-bit groups packed:
    // in 16-bit lanes, then 32, then 64.
    let x = w & (u64::MAX >> (64 - 8 * len)) & 0x7f7f_7f7f_7f7f_7f7f;
    let x = (x & 0x007f_007f_007f_007f) | ((x & 0x7f00_7f00_7f00_7f00) >> 1);
    let x = (x & 0x0000_3fff_0000_3fff) | ((x & 0x3fff_0000_3fff_0000) >> 2);
    let x = (x & 0x0000_0000_0fff_ffff) | ((x & 0x0fff_ffff_0000_0000) >> 4);
    Some((x, len))
}

/// Writes `v` as a varint into `buf` at `at`; returns the position after it. `buf` must
/// have 10 bytes of room from `at` (the longest varint; the 8-byte store of
/// [`varint_at`] needs 8): it panics otherwise.
#[inline(always)]
pub(crate) fn varint_into(buf: &mut [u8], at: usize, v: u64) -> usize {
    let room = &mut buf[at..at + 10];
    // SAFETY: `room` is 10 writable bytes.
    at + unsafe { varint_at(room.as_mut_ptr(), v) }
}

/// Writes `v` as a varint at `p`; returns its length. Below 2^14 it stores exactly the
/// varint's one or two bytes; above, the bytes after it up to `p + 8` may be overwritten
/// too (scratch: the next write covers them).
///
/// # Safety
/// `p` must be valid for writes of 10 bytes.
#[inline(always)]
pub(crate) unsafe fn varint_at(p: *mut u8, mut v: u64) -> usize {
    // SAFETY (all writes below): at most 10 bytes from `p`, as the caller guarantees.
    unsafe {
        if v < 0x80 {
            p.write(v as u8);
            return 1;
        }
        if v < 1 << 14 {
            // Two bytes (the lengths of payloads from 128 B to 16 KiB, and of their frames).
            p.write((v as u8) | 0x80);
            p.add(1).write((v >> 7) as u8);
            return 2;
        }
        if v < 1 << 56 {
            // Up to eight 7-bit groups spread into eight bytes at once, continuation bits
            // on all but the last used byte, and one 8-byte store (the bytes past the
            // varint are scratch the next write covers).
            let len = varint_len(v);
            let cont = 0x8080_8080_8080_8080u64 & ((1u64 << (8 * (len - 1))) - 1);
            p.cast::<[u8; 8]>()
                .write_unaligned((spread7(v) | cont).to_le_bytes());
            return len;
        }
        let mut n = 0;
        while v >= 0x80 {
            p.add(n).write((v as u8) | 0x80);
            v >>= 7;
            n += 1;
        }
        p.add(n).write(v as u8);
        n + 1
    }
}

/// Number of bytes `v` takes as a varint.
pub const fn varint_len(v: u64) -> usize {
    // ceil(bits / 7) of its 1..=64 significant bits (`v | 1`: 0 takes a byte), as
    // (9 * bits + 64) / 64, exact over that range: a multiply-add and a shift where
    // `div_ceil(7)` took a division and a remainder by 7 (a Deliver sizes six varints).
    let bits = 64 - (v | 1).leading_zeros() as usize;
    (9 * bits + 64) >> 6
}

/// Decodes one client frame body (after [`next_frame`]).
pub fn decode_client(body: Bytes) -> Result<crate::v1::ClientFrame, FrameError> {
    Ok(crate::v1::ClientFrame::decode(body)?)
}

/// Decodes one server frame body (after [`next_frame`]).
pub fn decode_server(body: Bytes) -> Result<crate::v1::ServerFrame, FrameError> {
    Ok(crate::v1::ServerFrame::decode(body)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{client_frame, ClientFrame, Ping, Send};

    #[test]
    fn varints_match_protobufs_encoding_at_every_length() {
        let mut values = vec![0u64, 1, u64::MAX];
        for bits in 1..64 {
            let p = 1u64 << bits;
            values.extend([p - 1, p, p + 1, p | 0x5555_5555_5555_5555 >> (63 - bits)]);
        }
        for v in values {
            let mut want = Vec::new();
            prost::encoding::encode_varint(v, &mut want);
            let mut got = Vec::new();
            put_varint(&mut got, v);
            assert_eq!(got, want, "{v:#x}");
            assert_eq!(varint_len(v), want.len(), "{v:#x}");
            // Into a buffer at an offset, with bytes around it left alone.
            let mut buf = [0xAAu8; 24];
            let end = varint_into(&mut buf, 3, v);
            assert_eq!(&buf[3..end], &want[..], "{v:#x}");
            assert_eq!(&buf[..3], &[0xAA; 3]);
        }
    }

    #[test]
    fn spread7_puts_each_7_bit_group_in_its_byte() {
        // One shift per group: what spread7 computes in halves.
        let per_group = |v: u64| (0..8).fold(0u64, |w, i| w | (((v >> (7 * i)) & 0x7f) << (8 * i)));
        let mut values = vec![0u64, u64::MAX, (1 << 56) - 1, 0x5555_5555_5555_5555];
        values.extend((0..64).map(|b| 1u64 << b));
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..10_000 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            values.extend([x, x >> (x % 64)]);
        }
        for v in values {
            assert_eq!(spread7(v), per_group(v), "{v:#x}");
            let low = v & ((1 << 56) - 1);
            let len = varint_len(low);
            if len <= 8 {
                let cont = 0x8080_8080_8080_8080u64 & ((1u64 << (8 * (len - 1))) - 1);
                assert_eq!(gather7(spread7(low) | cont), Some((low, len)), "{v:#x}");
            }
        }
    }

    fn sample_frames() -> Vec<ClientFrame> {
        vec![
            ClientFrame {
                kind: Some(client_frame::Kind::Ping(Ping { nonce: 7 })),
            },
            ClientFrame {
                kind: Some(client_frame::Kind::Send(Send {
                    request_id: 1,
                    to_user: "bob".into(),
                    payload: Bytes::from(vec![0xAB; 300]),
                    want_result: true,
                    ..Default::default()
                })),
            },
            ClientFrame { kind: None },
            ClientFrame {
                kind: Some(client_frame::Kind::Send(Send {
                    to_user: "zoë".into(),
                    payload: Bytes::from_static(b"hi"),
                    msg_id: u64::MAX,
                    ..Default::default()
                })),
            },
        ]
    }

    #[test]
    fn varint_len_matches_encoding() {
        for v in [0u64, 1, 127, 128, 16383, 16384, u32::MAX as u64, u64::MAX] {
            let mut b = BytesMut::new();
            put_varint(&mut b, v);
            assert_eq!(b.len(), varint_len(v), "v={v}");
            assert_eq!(peek_varint(&b).unwrap(), Some((v, b.len())));
        }
    }

    #[test]
    fn every_split_point_of_a_stream_decodes_the_same_frames() {
        let frames = sample_frames();
        let mut stream = BytesMut::new();
        for f in &frames {
            encode_frame(f, &mut stream);
        }
        let stream = stream.freeze();
        for split in 0..=stream.len() {
            for second_split in [split, (split + stream.len()) / 2] {
                let mut buf = BytesMut::new();
                let mut got = Vec::new();
                for chunk in [
                    &stream[..split],
                    &stream[split..second_split.max(split)],
                    &stream[second_split.max(split)..],
                ] {
                    buf.extend_from_slice(chunk);
                    while let Some(body) = next_frame(&mut buf, DEFAULT_MAX_FRAME_BYTES).unwrap() {
                        got.push(decode_client(body).unwrap());
                    }
                }
                assert_eq!(got, frames, "split at {split}/{second_split}");
                assert!(buf.is_empty());
            }
        }
    }

    #[test]
    fn split_frames_at_every_split_point() {
        let frames_in = sample_frames();
        let mut stream = BytesMut::new();
        for f in &frames_in {
            encode_frame(f, &mut stream);
        }
        for split in 0..=stream.len() {
            let mut buf = BytesMut::from(&stream[..split]);
            let mut got = Vec::new();
            let (chunk, err) = split_frames(&mut buf, DEFAULT_MAX_FRAME_BYTES);
            assert!(err.is_none());
            got.extend(frames(&chunk).map(|r| decode_client(chunk.slice(r)).unwrap()));
            buf.extend_from_slice(&stream[split..]);
            let (chunk, err) = split_frames(&mut buf, DEFAULT_MAX_FRAME_BYTES);
            assert!(err.is_none());
            got.extend(frames(&chunk).map(|r| decode_client(chunk.slice(r)).unwrap()));
            assert_eq!(got, frames_in, "split at {split}");
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn split_frames_returns_good_frames_before_an_error() {
        let mut buf = BytesMut::new();
        encode_frame(&sample_frames()[0], &mut buf);
        put_varint(&mut buf, 5000);
        let (chunk, err) = split_frames(&mut buf, 1024);
        assert_eq!(frames(&chunk).count(), 1);
        assert_eq!(
            err,
            Some(FrameError::TooLarge {
                len: 5000,
                max: 1024
            })
        );
    }

    #[test]
    fn incomplete_frame_consumes_nothing() {
        let mut full = BytesMut::new();
        encode_frame(&sample_frames()[1], &mut full);
        for cut in 0..full.len() {
            let mut buf = BytesMut::from(&full[..cut]);
            assert_eq!(next_frame(&mut buf, DEFAULT_MAX_FRAME_BYTES).unwrap(), None);
            assert_eq!(buf.len(), cut);
        }
    }

    #[test]
    fn oversized_length_is_refused_before_the_body_arrives() {
        let mut buf = BytesMut::new();
        put_varint(&mut buf, 1025);
        buf.extend_from_slice(b"x");
        assert_eq!(
            next_frame(&mut buf, 1024),
            Err(FrameError::TooLarge {
                len: 1025,
                max: 1024
            })
        );
        // A prefix at exactly the limit waits for its body.
        let mut buf = BytesMut::new();
        put_varint(&mut buf, 1024);
        assert_eq!(next_frame(&mut buf, 1024), Ok(None));
    }

    #[test]
    fn overlong_varint_is_bad_length() {
        let mut buf = BytesMut::from(&[0xFFu8; 11][..]);
        assert_eq!(next_frame(&mut buf, usize::MAX), Err(FrameError::BadLength));
        let mut buf = BytesMut::from(&[0xFFu8; 9][..]);
        assert_eq!(next_frame(&mut buf, usize::MAX), Ok(None));
        // 10th byte may only carry the top bit of a u64.
        let mut ten = vec![0xFFu8; 9];
        ten.push(0x02);
        assert_eq!(peek_varint(&ten), Err(FrameError::BadLength));
    }

    #[test]
    fn huge_declared_lengths_do_not_overflow() {
        // Fuzzing (frame_decode): a length near u64::MAX overflowed `prefix + len` in
        // frame_bytes_needed, and in split_frames with a limit of usize::MAX.
        let mut buf = BytesMut::new();
        put_varint(&mut buf, u64::MAX - 3);
        buf.extend_from_slice(b"xy");
        assert_eq!(frame_bytes_needed(&buf), Some(usize::MAX - buf.len()));
        let mut one = BytesMut::new();
        encode_frame(&sample_frames()[0], &mut one);
        let mut stream = one.clone();
        stream.extend_from_slice(&buf);
        let (chunk, err) = split_frames(&mut stream, usize::MAX);
        assert_eq!((chunk, err), (one.clone().freeze().slice(..), None));
        assert_eq!(stream, buf, "the incomplete frame stays");
        assert_eq!(next_frame(&mut stream, usize::MAX), Ok(None));
    }

    #[test]
    fn garbage_body_is_malformed() {
        // field 1, wire type LEN, length 200 but only 2 bytes follow.
        let body = Bytes::from_static(&[0x0A, 0xC8, 0x01, 1, 2]);
        assert!(matches!(decode_client(body), Err(FrameError::Malformed(_))));
    }

    #[test]
    fn body_shares_the_read_buffer() {
        let mut buf = BytesMut::new();
        encode_frame(&sample_frames()[1], &mut buf);
        let base = buf.as_ptr() as usize;
        let end = base + buf.len();
        let body = next_frame(&mut buf, DEFAULT_MAX_FRAME_BYTES)
            .unwrap()
            .unwrap();
        let p = body.as_ptr() as usize;
        assert!(p > base && p + body.len() <= end);
    }
}
