//! Allocator tuning for the `ringrouter` binary (mimalloc is its global allocator).
//!
//! Measured on the 2-core machine (BENCHMARKS.md): with mimalloc's defaults the
//! router spent 10–37% of its CPU in the kernel zeroing fresh pages
//! (`clear_page_erms` under `do_huge_pmd_anonymous_page`): memory that mimalloc
//! purged came back as 2 MiB transparent huge pages, zeroed whole. With THP off
//! for mimalloc's memory (4 KiB pages) 256 pairs ran +6–15% faster, 16 pairs the same.
//!
//! Freed memory goes back to the system after [`PURGE_DELAY_MS`], not mimalloc's 1 s: under
//! load, memory a shard freed a second ago (history chunks, read buffers, queued frames)
//! was purged and faulted in again, zeroed, at 256 pairs × 64 B 11% of the shards'
//! samples in page faults (BENCHMARKS.md, twenty-sixth pass). A process idle for a
//! second and a shard over `--max-memory` still return what was freed at once
//! ([`collect_now`]: it purges what every thread freed, so idleness is the process's,
//! [`note_activity`]).

use std::os::raw::{c_int, c_long};
use std::sync::atomic::{AtomicU64, Ordering};

// Links mimalloc (and its C library) into every binary of this crate, tests included.
extern crate mimalloc;

// Indices in mimalloc v3's `mi_option_e` (the version libmimalloc-sys 0.1.49
// builds); `tests::option_indices_match_mimalloc` checks them through their
// defaults.
const MI_OPTION_PURGE_DELAY: c_int = 15;
const MI_OPTION_ALLOW_THP: c_int = 43;

extern "C" {
    fn mi_option_set(option: c_int, value: c_long);
    fn mi_collect(force: bool);
    #[cfg(test)]
    fn mi_option_get(option: c_int) -> c_long;
}

/// How long memory freed under load stays with mimalloc before it goes back to the
/// system, unless the environment sets `MIMALLOC_PURGE_DELAY` (see the module doc).
pub const PURGE_DELAY_MS: c_long = 10_000;

/// Turns transparent huge pages off for this process (mimalloc's option only
/// covers memory it maps later; the prctl also covers the arena it reserved
/// before `main`), unless the environment sets `MIMALLOC_ALLOW_THP`; sets the purge
/// delay to [`PURGE_DELAY_MS`] unless it sets `MIMALLOC_PURGE_DELAY`.
pub fn tune_mimalloc() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // Safety: a plain option setter of the linked mimalloc; a delay in ms is valid.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
    }
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // Safety: a plain option setter of the linked mimalloc; 0 is a valid value.
        unsafe { mi_option_set(MI_OPTION_ALLOW_THP, 0) };
        // Safety: PR_SET_THP_DISABLE takes plain integers and only sets a flag
        // on this process; failure (old kernel) leaves THP as it was.
        unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    }
}

/// Returns everything freed to the operating system now, purge delay or not
/// (`mi_collect(true)`: a walk of this thread's heap, milliseconds, and a purge of the
/// arenas every thread shares: what busy threads freed too).
/// - A process idle for a while ([`IdleCollect`] over [`activity`]): mimalloc purges
///   only when a thread allocates or frees again, so an idle thread kept what it freed.
///   With 10 000 idle sessions that was 1.4 KiB a session (`ringrouter-idle`: 4.95 KiB
///   with mimalloc's 1 s delay, 3.58 KiB with `MIMALLOC_PURGE_DELAY=0`). Under load,
///   on any thread, it is not called, so freed memory is reused without page faults.
/// - A shard over `--max-memory`, before it decides that sessions must go: freed memory
///   counts in the resident size for the purge delay otherwise.
pub fn collect_now() {
    // Safety: a plain call into the linked mimalloc (a no-op for memory another
    // allocator owns); `true`: everything freed, at once.
    unsafe { mi_collect(true) };
}

/// Work done by the process's threads (a shard's messages, writes and logins, the
/// storage thread's requests): [`IdleCollect`] waits for all of them to be idle.
static ACTIVITY: AtomicU64 = AtomicU64::new(0);

/// Adds `n` to the process's [`activity`] (a thread's work since it last told).
pub fn note_activity(n: u64) {
    if n > 0 {
        ACTIVITY.fetch_add(n, Ordering::Relaxed);
    }
}

/// The process's work so far (see [`note_activity`]).
pub fn activity() -> u64 {
    ACTIVITY.load(Ordering::Relaxed)
}

/// Tells when the process (its [`activity`]) has been idle long enough to return freed memory
/// ([`collect_now`]): once per idle stretch, after `after` without activity.
#[derive(Debug)]
pub struct IdleCollect {
    after: std::time::Duration,
    /// This thread's work as last reported ([`IdleCollect::due_after`]).
    told: u64,
    last: u64,
    since: std::time::Instant,
    done: bool,
}

impl IdleCollect {
    /// Starts with no idle stretch.
    pub fn new(after: std::time::Duration, now: std::time::Instant) -> Self {
        IdleCollect {
            after,
            told: 0,
            last: 0,
            since: now,
            done: false,
        }
    }

    /// `work`: this thread's count of work done (messages, writes, logins, requests; it
    /// only grows). What it did since the last call counts in the process's
    /// [`activity`]; true once that has not moved for `after` (see [`IdleCollect::due`]).
    pub fn due_after(&mut self, work: u64, now: std::time::Instant) -> bool {
        note_activity(work.saturating_sub(self.told));
        self.told = work;
        self.due(activity(), now)
    }

    /// `activity`: a count that moves with any work (messages, writes, logins). True
    /// once it has not moved for `after`, then not again until it moves and stops.
    pub fn due(&mut self, activity: u64, now: std::time::Instant) -> bool {
        if activity != self.last {
            self.last = activity;
            self.since = now;
            self.done = false;
            return false;
        }
        if self.done || now.duration_since(self.since) < self.after {
            return false;
        }
        self.done = true;
        true
    }
}

/// Current value of a mimalloc option.
#[cfg(test)]
fn option(option: c_int) -> c_long {
    // Safety: reads an option of the linked mimalloc.
    unsafe { mi_option_get(option) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_collect_fires_once_per_idle_stretch() {
        use std::time::{Duration, Instant};
        let t = Instant::now();
        let s = Duration::from_secs(1);
        let mut c = IdleCollect::new(s, t);
        assert!(!c.due(0, t + Duration::from_millis(500)));
        assert!(c.due(0, t + s), "idle for `after`");
        assert!(!c.due(0, t + 3 * s), "once per stretch");
        assert!(!c.due(5, t + 4 * s), "activity");
        assert!(!c.due(5, t + 4 * s + Duration::from_millis(999)));
        assert!(c.due(5, t + 5 * s), "a new stretch");
        collect_now();
    }

    #[test]
    fn option_indices_match_mimalloc() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some()
            || std::env::var_os("MIMALLOC_ALLOW_THP").is_some()
        {
            return;
        }
        // v3 defaults (options.c): purge_delay 1000 ms, the only option worth 1000,
        // so the enum layout is the one assumed; allow_thp 1 (this process does not tune).
        assert_eq!(option(MI_OPTION_PURGE_DELAY), 1000);
        assert_eq!(option(MI_OPTION_ALLOW_THP), 1);
    }
}
