//! The process's allocator: mimalloc (v3, as `Cargo.lock` pins it), as
//! DataFusion's own CLI uses. Scans allocate and free a batch-sized buffer
//! per stored batch, and glibc's malloc maps and unmaps those (page faults
//! each time); measured, the read side of a bounded query cost about 40%
//! more CPU with it.
//!
//! One setting differs from mimalloc's defaults: a thread that frees a
//! block in a page another thread has abandoned never takes that page over
//! (`page_reclaim_on_free = -1`). A query's batches are made on the
//! runtime's workers and dropped where their rows go (a subscriber, an
//! HTTP response). With the default, the dropping thread's frees went
//! through mimalloc's handling of abandoned pages (`mi_free_try_collect_mt`:
//! collecting the page's cross-thread frees, and taking over pages that
//! thread has none of in that size). In a profile of `sluice bench nexmark
//! --query q1 --format arrow` those frees were 5–10% of the query's CPU,
//! and 0.7% with the setting (BENCHMARKS.md, "Freeing output where it
//! lands"). Abandoned pages are still reused: a thread that needs a fresh
//! page takes them first. The environment variable
//! `MIMALLOC_PAGE_RECLAIM_ON_FREE` still overrides the setting
//! (`MIMALLOC_PAGE_RECLAIM_ON_FREE=0 sluice ...` runs with the default).

use std::ffi::{c_int, c_long};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

unsafe extern "C" {
    fn mi_option_set(option: c_int, value: c_long);
    #[cfg(test)]
    fn mi_option_get(option: c_int) -> c_long;
}

/// `mi_option_page_reclaim_on_free` in the `mi_option_t` enum of the
/// mimalloc v3 that libmimalloc-sys 0.1.49 builds (`include/mimalloc.h`).
/// libmimalloc-sys's Rust enum constants are those of mimalloc v2, where
/// this option does not exist; [`tests::option_indices_are_mimalloc_v3s`]
/// checks the index against the options around it.
const PAGE_RECLAIM_ON_FREE: c_int = 35;

/// Applies the settings above, unless the environment sets them.
pub(crate) fn configure() {
    if std::env::var_os("MIMALLOC_PAGE_RECLAIM_ON_FREE").is_some() {
        return;
    }
    // SAFETY: the index names an option of the linked mimalloc (checked by
    // the test below); setting an option is a plain store mimalloc allows
    // at any time.
    unsafe { mi_option_set(PAGE_RECLAIM_ON_FREE, -1) }
}

/// The value of mimalloc option `option`.
#[cfg(test)]
fn option(option: c_int) -> c_long {
    // SAFETY: reading an option by its index is a plain load; an index past
    // the table reads as 0, not out of bounds.
    unsafe { mi_option_get(option) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The options before and after `page_reclaim_on_free` hold their
    /// documented v3 defaults (`generic_collect` 10,000, `page_full_retain`
    /// 2, `page_max_candidates` 4), so index 35 is that option: a
    /// libmimalloc-sys that moved the enum fails here, not silently in
    /// production.
    #[test]
    fn option_indices_are_mimalloc_v3s() {
        assert_eq!(option(PAGE_RECLAIM_ON_FREE - 1), 10_000);
        assert_eq!(option(PAGE_RECLAIM_ON_FREE + 1), 2);
        assert_eq!(option(PAGE_RECLAIM_ON_FREE + 2), 4);
        configure();
        if std::env::var_os("MIMALLOC_PAGE_RECLAIM_ON_FREE").is_none() {
            assert_eq!(option(PAGE_RECLAIM_ON_FREE), -1);
        }
    }
}
