//! The `cargo fuzz` side of fedlnm's fuzzing: the harnesses of `tests/src/fuzzing.rs` (the same file
//! the normal suite's `tests/tests/fuzz_regressions.rs` replays the kept inputs through), the
//! [`target!`] macro that makes a fuzz target of one, and [`LimitedAllocator`], which refuses any single
//! allocation above [`MAX_ALLOCATION`] so that a decoder sizing a buffer from a hostile header aborts
//! (a finding) instead of passing unnoticed: libFuzzer's own `-malloc_limit_mb` needs a sanitizer's
//! allocator, and these targets are built without one (`scripts/fuzz`: the code under test forbids
//! `unsafe`, so what a sanitizer adds is mostly a slower run).

use std::alloc::{GlobalAlloc, Layout, System};

#[path = "../../tests/src/fuzzing.rs"]
pub mod harness;

pub use libfuzzer_sys;

/// The largest single allocation a target may make: twice the `image` crate's default decoding limit
/// (512 MiB), far above what any decoder needs for a 1 MiB input (`scripts/fuzz` runs `-max_len`
/// 1 MiB) unless it trusts a size the input only announces.
pub const MAX_ALLOCATION: usize = 1 << 30;

/// The system allocator, refusing (null: Rust's allocation-error handler aborts the process, which
/// libFuzzer reports as a crash with its input) any allocation above [`MAX_ALLOCATION`].
pub struct LimitedAllocator;

// SAFETY: every call is forwarded unchanged to the system allocator, or answered with null, which
// `GlobalAlloc` allows (the caller then reports an allocation error).
unsafe impl GlobalAlloc for LimitedAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > MAX_ALLOCATION {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > MAX_ALLOCATION {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > MAX_ALLOCATION {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// A fuzz target that feeds each input to `harness::$name` under [`LimitedAllocator`]; the outcome
/// (decoded or refused) does not matter, a panic or an abort does.
#[macro_export]
macro_rules! target {
    ($name:ident) => {
        #[global_allocator]
        static ALLOCATOR: $crate::LimitedAllocator = $crate::LimitedAllocator;

        $crate::libfuzzer_sys::fuzz_target!(|data: &[u8]| {
            let _ = $crate::harness::$name(data);
        });
    };
}
