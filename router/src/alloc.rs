//! Allocator tuning for the `ringrouter` binary (mimalloc is its global allocator).
//!
//! Measured on the 2-core machine (BENCHMARKS.md): with mimalloc's defaults the
//! router spent 10–37% of its CPU in the kernel zeroing fresh pages
//! (`clear_page_erms` under `do_huge_pmd_anonymous_page`): memory that mimalloc
//! purged came back as 2 MiB transparent huge pages, zeroed whole. With THP off
//! for mimalloc's memory (4 KiB pages) 256 pairs ran +6–15% faster, 16 pairs the same.

use std::os::raw::{c_int, c_long};

// Links mimalloc (and its C library) into every binary of this crate, tests included.
extern crate mimalloc;

// Indices in mimalloc v3's `mi_option_e` (the version libmimalloc-sys 0.1.49
// builds); `tests::option_indices_match_mimalloc` checks them through their
// defaults.
#[cfg(test)]
const MI_OPTION_PURGE_DELAY: c_int = 15;
const MI_OPTION_ALLOW_THP: c_int = 43;

extern "C" {
    fn mi_option_set(option: c_int, value: c_long);
    #[cfg(test)]
    fn mi_option_get(option: c_int) -> c_long;
}

/// Turns transparent huge pages off for this process (mimalloc's option only
/// covers memory it maps later; the prctl also covers the arena it reserved
/// before `main`), unless the environment sets `MIMALLOC_ALLOW_THP`.
pub fn tune_mimalloc() {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // Safety: a plain option setter of the linked mimalloc; 0 is a valid value.
        unsafe { mi_option_set(MI_OPTION_ALLOW_THP, 0) };
        // Safety: PR_SET_THP_DISABLE takes plain integers and only sets a flag
        // on this process; failure (old kernel) leaves THP as it was.
        unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
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
