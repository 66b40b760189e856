//! Helpers shared by the aggregator's integration tests that run the real binaries.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // Each test binary uses some of them.

use std::path::PathBuf;

/// A binary of this workspace, built beside this test's `fedlnm-aggregator` (`cargo test --workspace`
/// builds `fedlnm-node` there, because the node package has integration tests).
pub fn built_binary(name: &str) -> PathBuf {
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_fedlnm-aggregator")).with_file_name(name);
    assert!(
        binary.is_file(),
        "{} is not built: `cargo build -p fedlnm-node` (or run `cargo test --workspace`, which builds it)",
        binary.display()
    );
    binary
}

/// `fedlnm-node`, see [`built_binary`].
pub fn node_bin() -> PathBuf {
    built_binary("fedlnm-node")
}
