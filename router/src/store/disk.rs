//! The store's floor on disk (`--min-free-disk-bytes`).
//!
//! Offline queues, history and journals are each bounded per user or per conversation,
//! but users are free to make (a login in open auth): one client grew a data directory
//! by 300–600 MB a second with 1 MB messages to 64 users, and a full disk poisoned the
//! embedded store (every later write failed until a restart). So the storage thread
//! looks at the free space of the data directory's filesystem every [`CHECK_EVERY`];
//! under the floor the store is *full* until an eighth more than the floor is free
//! again (no flapping at the line). While it is full:
//! - a Send to an offline user is refused UNAVAILABLE (its sender keeps it), and so is
//!   one to a user one of whose sessions holds over 1 MiB delivered and not acked
//!   (`shard::delivery::FULL_UNACKED_BYTES`; none of its devices gets it): what a
//!   closing session leaves unacked is stored, unbounded otherwise by sessions that
//!   never ack and disconnect. A room message gets UNAVAILABLE when a member was
//!   refused, though its live members have it;
//! - with `--durability sync` every Send is refused (each goes through the store);
//! - history is not written (counted);
//! - live delivery goes on, and what was accepted before (a closing session's unacked
//!   messages) is still stored, as are removals and updates; what only grows the store
//!   is refused (`Worker::refused_when_full`: new accounts and user records, rooms,
//!   members, contact lists, notices for offline users).
//!
//! The store's own deletes free space only as its engine compacts: the floor is about
//! the filesystem, which the operator can free, not about what the store holds.
//!
//! A store whose commit failed anyway (the disk filled by someone else) is marked
//! failed: `/readyz` says 503 and `ringrouter_store_failed` is 1 (a failed engine stays
//! failed until the router restarts).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// How often the storage thread looks (a `statvfs` and the store's own sizes, which
/// its engine keeps in memory). At 600 MB/s, 60 MB pass between two looks: far under
/// the default floor.
pub(crate) const CHECK_EVERY: Duration = Duration::from_millis(100);

/// Whether a filesystem with `free` bytes free is full under the floor `min_free`
/// (0: none), given whether it was (`was`): full under the floor, and until an eighth
/// more than the floor is free again.
pub(crate) fn full(min_free: u64, free: u64, was: bool) -> bool {
    let line = if was {
        min_free.saturating_add(min_free / 8)
    } else {
        min_free
    };
    min_free > 0 && free < line
}

/// What the storage thread last saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct DiskSeen {
    pub free: u64,
    pub used: u64,
    pub full: bool,
}

/// The storage thread's looks at the disk.
pub(crate) struct DiskWatch {
    dir: Option<CString>,
    min_free: u64,
    next: Instant,
    seen: DiskSeen,
}

impl DiskWatch {
    pub(crate) fn new(dir: &Path, min_free: u64) -> Self {
        DiskWatch {
            dir: CString::new(dir.as_os_str().as_bytes()).ok(),
            min_free,
            next: Instant::now(),
            seen: DiskSeen::default(),
        }
    }

    /// Looks again if [`CHECK_EVERY`] has passed since the last look (`used`: the
    /// store's bytes now). `Some` with what it saw when it looked.
    pub(crate) fn look(&mut self, now: Instant, used: impl FnOnce() -> u64) -> Option<DiskSeen> {
        if now < self.next {
            return None;
        }
        self.next = now + CHECK_EVERY;
        // A filesystem that cannot be asked counts as having room (the engine's own
        // errors still say when it has none).
        let free = self.dir.as_deref().and_then(free_bytes).unwrap_or(u64::MAX);
        let used = used();
        let full = full(self.min_free, free, self.seen.full);
        if full != self.seen.full {
            if full {
                tracing::warn!(
                    free,
                    used,
                    min_free = self.min_free,
                    "store disk full (--min-free-disk-bytes): offline messages refused, history not written"
                );
            } else {
                tracing::info!(free, used, "store disk has room again");
            }
        }
        self.seen = DiskSeen { free, used, full };
        Some(self.seen)
    }
}

/// Bytes available to this process on the filesystem of `dir` (`statvfs`).
fn free_bytes(dir: &std::ffi::CStr) -> Option<u64> {
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `dir` is a NUL-terminated path; `st` is a valid out pointer for one
    // `statvfs`, read only when the call succeeded (it then filled it).
    let st = unsafe {
        if libc::statvfs(dir.as_ptr(), st.as_mut_ptr()) != 0 {
            return None;
        }
        st.assume_init()
    };
    Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_under_the_floor_until_an_eighth_more_is_free() {
        assert!(!full(0, 0, false), "no floor: never full");
        assert!(!full(0, 0, true));
        assert!(full(800, 799, false));
        assert!(!full(800, 800, false));
        assert!(full(800, 899, true), "still full under floor + 1/8");
        assert!(!full(800, 900, true));
    }

    #[test]
    fn looks_at_most_every_interval_and_sees_the_real_filesystem() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut w = DiskWatch::new(dir.path(), u64::MAX);
        let t = Instant::now();
        let seen = w.look(t, || 5).expect("the first look is due");
        assert!(seen.free > 0 && seen.free < u64::MAX, "{seen:?}");
        assert_eq!(seen.used, 5);
        assert!(seen.full, "no filesystem has u64::MAX bytes free");
        assert!(w.look(t + CHECK_EVERY / 2, || 5).is_none());
        assert!(w.look(t + CHECK_EVERY, || 5).is_some());
    }
}
