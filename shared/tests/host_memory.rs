//! `host::resident_memory` and its reset, in a process of their own (the figures are the whole
//! process's: other tests running beside them in one binary would move them).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use fedlnm_shared::host::{reset_peak_resident_memory, resident_memory};

#[test]
fn the_peak_after_a_reset_is_what_followed_it() {
    let Some(before) = resident_memory(None) else {
        return; // Not Linux: nothing to read.
    };
    assert!(before.peak >= before.current && before.current > 0, "{before:?}");
    // 64 MiB touched, then freed: the peak keeps it, the reset forgets it.
    let block = vec![1u8; 64 << 20];
    std::hint::black_box(&block);
    drop(block);
    let touched = resident_memory(None).unwrap();
    assert!(
        touched.peak >= before.current + (60 << 20),
        "{before:?} then {touched:?}"
    );
    reset_peak_resident_memory().unwrap();
    let after = resident_memory(None).unwrap();
    assert!(
        after.peak < touched.peak,
        "{touched:?} then, after the reset, {after:?}"
    );
    assert_eq!(
        resident_memory(Some(std::process::id())).map(|m| m.peak > 0),
        Some(true)
    );
}
