//! Per-thread (so per-shard) pools of read buffers, so that an idle session holds no
//! buffer and a busy one does not allocate one per read.
//!
//! A session's reader gives its buffer back whenever a read would block with nothing
//! buffered (no partial frame), waits for readability without a buffer, and takes one
//! again when bytes are there. A pooled buffer is the unused tail of an earlier read
//! buffer: the frames read before it are `Bytes` slices of the same allocation (the
//! payloads queued on other sessions), so the tail is never handed out twice and the
//! allocation lives until its last slice is dropped (reference counts, no copy).

use std::cell::RefCell;

use bytes::BytesMut;

/// Size of a fresh read buffer.
pub(crate) const READ_BUF: usize = 64 * 1024;
/// Smallest free space worth a read call (and worth keeping in the pool).
pub(crate) const MIN_READ: usize = 4 * 1024;
/// Buffers kept per shard: the busy readers of one loop turn. Each keeps at most one
/// [`READ_BUF`] allocation alive, so the pool holds at most `KEEP * READ_BUF` bytes.
const KEEP: usize = 8;

thread_local! {
    static READ: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// The last buffer given back on this thread, if any.
pub(crate) fn take_pooled() -> Option<BytesMut> {
    READ.with(|p| p.borrow_mut().pop())
}

/// Gives an empty read buffer back (kept if it still has [`MIN_READ`] bytes of room and
/// the pool has space; else dropped). A buffer holding bytes is dropped.
pub(crate) fn give_read(buf: BytesMut) {
    if buf.is_empty() && buf.capacity() >= MIN_READ {
        READ.with(|p| {
            let mut p = p.borrow_mut();
            if p.len() < KEEP {
                p.push(buf);
            }
        });
    }
}

/// Buffers in this thread's pool.
#[cfg(test)]
fn pooled() -> usize {
    READ.with(|p| p.borrow().len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tail_is_reused_and_never_shared_with_live_frames() {
        let mut b = BytesMut::with_capacity(READ_BUF);
        b.extend_from_slice(&[1u8; 100]);
        let frame = b.split().freeze();
        give_read(b);
        assert_eq!(pooled(), 1);
        let mut again = take_pooled().expect("pooled");
        assert_eq!(pooled(), 0);
        assert!(again.capacity() >= MIN_READ);
        again.extend_from_slice(&[2u8; 100]);
        // The earlier frame is untouched: the tail starts after it.
        assert_eq!(&frame[..], &[1u8; 100][..]);
        give_read(again); // not empty: dropped
        assert_eq!(pooled(), 0);
        assert!(take_pooled().is_none());
        give_read(BytesMut::with_capacity(16)); // too small: dropped
        assert_eq!(pooled(), 0);
        for _ in 0..2 * KEEP {
            give_read(BytesMut::with_capacity(READ_BUF));
        }
        assert_eq!(pooled(), KEEP);
    }
}
