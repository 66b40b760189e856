//! Helpers shared by the node's integration tests: run the real `fedlnm-node` binary, and run the
//! independent Python reference scripts (scikit-learn, statsmodels, scipy; installed by `.ci/run`).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // Test helpers: a panic is a failed test.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The Python interpreter that has the reference libraries: `$FEDLNM_PYTHON`, else `python3`.
pub fn python() -> String {
    std::env::var("FEDLNM_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// Path of a reference script under `node/tests/reference/`.
pub fn reference_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("reference")
        .join(name)
}

/// Runs `python3 node/tests/reference/<script> <args...>` and parses the JSON it prints.
/// Panics with Python's stderr when the script fails (for example, a reference library is missing).
pub fn python_reference(script: &str, args: &[&Path]) -> serde_json::Value {
    let output = Command::new(python())
        .arg(reference_script(script))
        .args(args)
        .output()
        .expect("cannot start python3: set FEDLNM_PYTHON or install Python 3 with the reference libraries");
    assert!(
        output.status.success(),
        "reference script {script} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("reference script printed invalid JSON")
}

/// Runs the real `fedlnm-node` binary with `args`.
pub fn fedlnm_node(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fedlnm-node"))
        .args(args)
        .output()
        .expect("cannot start fedlnm-node")
}

/// Runs `fedlnm-node` and parses its standard output as JSON; panics with stderr on a non-zero exit.
pub fn fedlnm_node_json(args: &[&str]) -> serde_json::Value {
    let output = fedlnm_node(args);
    assert!(
        output.status.success(),
        "fedlnm-node {args:?} failed ({:?}):\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("fedlnm-node printed invalid JSON")
}

/// Asserts that `fedlnm-node args` exits with code 2 and that its error message contains every one of
/// `needles` (the file, the line, the column, the problem).
pub fn assert_input_error(args: &[&str], needles: &[&str]) {
    let output = fedlnm_node(args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(2),
        "expected exit code 2 for {args:?}; stderr:\n{stderr}"
    );
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "error for {args:?} does not mention '{needle}':\n{stderr}"
        );
    }
}

/// `|actual - expected| <= tolerance`, treating JSON null as "undefined" that must match null.
pub fn assert_close(what: &str, actual: &serde_json::Value, expected: &serde_json::Value, tolerance: f64) {
    match (actual.as_f64(), expected.as_f64()) {
        (Some(a), Some(e)) => assert!(
            (a - e).abs() <= tolerance,
            "{what}: ours {a} vs reference {e} (tol {tolerance})"
        ),
        (None, None) => assert!(
            actual.is_null() && expected.is_null(),
            "{what}: {actual} vs {expected}"
        ),
        _ => panic!("{what}: ours {actual} vs reference {expected}"),
    }
}

/// Relative closeness: `|a - e| <= tolerance * max(|e|, 1e-300)`; nulls must match.
pub fn assert_close_relative(
    what: &str,
    actual: &serde_json::Value,
    expected: &serde_json::Value,
    tolerance: f64,
) {
    match (actual.as_f64(), expected.as_f64()) {
        (Some(a), Some(e)) => {
            assert!(
                (a - e).abs() <= tolerance * e.abs().max(1e-300),
                "{what}: ours {a} vs reference {e} (rel tol {tolerance})"
            );
        }
        (None, None) => assert!(
            actual.is_null() && expected.is_null(),
            "{what}: {actual} vs {expected}"
        ),
        _ => panic!("{what}: ours {actual} vs reference {expected}"),
    }
}
