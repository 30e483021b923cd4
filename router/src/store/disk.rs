//! The store's bound on disk (`--min-free-disk-bytes`, `--max-store-bytes`).
//!
//! Offline queues, history and journals are each bounded per user or per conversation,
//! but users are free to make (a login in open auth): one client grew a data directory
//! by 300–600 MB a second with 1 MB messages to 64 users, and a full disk poisoned the
//! embedded store (every later write failed until a restart). So the storage thread
//! looks at the filesystem's free space and at the store's own files every
//! [`CHECK_EVERY`]: while the free space is under the floor, or the store's files are
//! over their bound, the store is *full*. Then new messages for offline queues are
//! refused UNAVAILABLE (their senders keep them: nothing accepted is lost) and history
//! is not written (counted); live delivery goes on, and what was accepted before (a
//! closing session's unacked messages) is still stored, within the room the floor
//! leaves. Room and contact records are small and rate-bounded: they go on too.
//!
//! A store whose commit failed anyway (the disk filled by someone else) is marked
//! failed: `/readyz` says 503 and `ringrouter_store_failed` is 1 until a commit succeeds.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// How often the storage thread looks (a `statvfs` and the store's own sizes, which
/// its engine keeps in memory). At 600 MB/s, 60 MB pass between two looks: far under
/// the default floor.
pub(crate) const CHECK_EVERY: Duration = Duration::from_millis(100);

/// The bounds (0: none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskLimits {
    /// Free bytes the filesystem of the data directory must keep.
    pub min_free: u64,
    /// Most bytes of the store's files (its engine's tables and journals, and the
    /// history log).
    pub max_bytes: u64,
}

impl DiskLimits {
    /// Whether a store using `used` bytes on a filesystem with `free` bytes free is full.
    pub(crate) fn full(&self, free: u64, used: u64) -> bool {
        (self.min_free > 0 && free < self.min_free)
            || (self.max_bytes > 0 && used >= self.max_bytes)
    }
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
    limits: DiskLimits,
    next: Instant,
    seen: DiskSeen,
}

impl DiskWatch {
    pub(crate) fn new(dir: &Path, limits: DiskLimits) -> Self {
        DiskWatch {
            dir: CString::new(dir.as_os_str().as_bytes()).ok(),
            limits,
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
        let full = self.limits.full(free, used);
        if full != self.seen.full {
            if full {
                tracing::warn!(
                    free,
                    used,
                    min_free = self.limits.min_free,
                    max_bytes = self.limits.max_bytes,
                    "store disk full: offline messages refused, history not written"
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
    fn full_below_the_floor_or_over_the_bound() {
        let none = DiskLimits::default();
        assert!(!none.full(0, u64::MAX), "no bounds: never full");
        let floor = DiskLimits {
            min_free: 100,
            max_bytes: 0,
        };
        assert!(floor.full(99, 0));
        assert!(!floor.full(100, u64::MAX));
        let max = DiskLimits {
            min_free: 0,
            max_bytes: 1000,
        };
        assert!(max.full(u64::MAX, 1000));
        assert!(!max.full(0, 999));
    }

    #[test]
    fn looks_at_most_every_interval_and_sees_the_real_filesystem() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut w = DiskWatch::new(
            dir.path(),
            DiskLimits {
                min_free: u64::MAX,
                max_bytes: 0,
            },
        );
        let t = Instant::now();
        let seen = w.look(t, || 5).expect("the first look is due");
        assert!(seen.free > 0 && seen.free < u64::MAX, "{seen:?}");
        assert_eq!(seen.used, 5);
        assert!(seen.full, "no filesystem has u64::MAX bytes free");
        assert!(w.look(t + CHECK_EVERY / 2, || 5).is_none());
        assert!(w.look(t + CHECK_EVERY, || 5).is_some());
    }
}
