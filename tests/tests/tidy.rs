//! Architecture invariants that can be checked by reading the source tree and the dependency graph
//! (in the spirit of rust-analyzer's `tidy`): each is a line of ARCHITECTURE.md, each failure names the
//! file or the crate. What a crate may depend on is read from `cargo tree`, as cargo resolves it.

use std::path::{Path, PathBuf};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if path.is_dir() && name != "target" && !name.to_string_lossy().starts_with('.') {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn crate_sources(krate: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    rust_files(&workspace_root().join(krate), &mut files);
    assert!(!files.is_empty(), "no Rust files found under {krate}/");
    files
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The `[dependencies]` section of a crate's manifest (not dev-dependencies).
fn normal_dependencies(krate: &str) -> String {
    let manifest = read(&workspace_root().join(krate).join("Cargo.toml"));
    let start = manifest
        .find("\n[dependencies]")
        .unwrap_or_else(|| panic!("{krate}/Cargo.toml has no [dependencies]"));
    let rest = &manifest[start + 1..];
    let end = rest[1..].find("\n[").map_or(rest.len(), |i| i + 1);
    rest[..end].to_owned()
}

/// The names of a crate's `[dependencies]`, in manifest order.
fn dependency_names(krate: &str) -> Vec<String> {
    normal_dependencies(krate)
        .lines()
        .skip(1)
        .filter_map(|line| line.split(['.', ' ', '=']).next())
        .filter(|name| !name.is_empty() && !name.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// Every member crate's folder.
const WORKSPACE: [&str; 11] = [
    "stats",
    "tensors",
    "secagg",
    "shared",
    "report",
    "model",
    "protocol",
    "node",
    "aggregator",
    "sim",
    "tests",
];

/// The library crates below the wire: none of them does network I/O or prints.
const PLAIN_LIBRARIES: [&str; 5] = ["stats", "tensors", "secagg", "shared", "model"];

#[test]
fn every_module_starts_with_a_doc_line() {
    for krate in WORKSPACE {
        for file in crate_sources(krate) {
            let text = read(&file);
            assert!(
                text.starts_with("//!"),
                "{} must start with a `//!` line saying what it is for",
                file.display()
            );
        }
    }
}

#[test]
fn aggregator_never_depends_on_burn() {
    let deps = normal_dependencies("aggregator");
    assert!(
        !deps.lines().any(|l| l.trim_start().starts_with("burn")),
        "aggregator/Cargo.toml depends on burn:\n{deps}"
    );
}

#[test]
fn shared_does_no_network_io() {
    for krate in PLAIN_LIBRARIES {
        let closure = dependency_closure(&format!("fedlnm-{krate}"));
        for forbidden in ["tokio", "tonic", "hyper", "reqwest", "axum", "fedlnm-protocol"] {
            assert!(
                !closure.iter().any(|c| c == forbidden),
                "fedlnm-{krate} builds {forbidden}, but it does no network I/O"
            );
        }
        for file in crate_sources(&format!("{krate}/src")) {
            let text = read(&file);
            for socket in ["TcpStream", "TcpListener", "UdpSocket"] {
                assert!(
                    !text.contains(socket),
                    "{} uses {socket}, but {krate} does no network I/O",
                    file.display()
                );
            }
        }
    }
}

#[test]
fn the_report_renders_strings_and_does_no_io() {
    assert_eq!(
        dependency_names("report"),
        ["fedlnm-shared", "maud", "serde", "base64"],
        "fedlnm-report renders records into strings with maud only"
    );
    for file in crate_sources("report/src") {
        let text = read(&file);
        for io in [
            "std::fs",
            "std::net",
            "std::io",
            "std::process",
            "std::env",
            "println!",
        ] {
            assert!(
                !text.contains(io),
                "{} uses {io}: the report crate renders strings, its callers read and write",
                file.display()
            );
        }
    }
}

#[test]
fn statistics_do_no_io() {
    assert_eq!(
        dependency_names("stats"),
        ["thiserror", "serde", "libm", "nalgebra", "puruspe"],
        "fedlnm-stats depends on numerics and serde only"
    );
    for file in crate_sources("stats/src") {
        let text = read(&file);
        for io in ["std::fs", "std::net", "std::io", "std::process", "std::env"] {
            assert!(
                !text.contains(io),
                "{} uses {io}: the statistics engine does no I/O",
                file.display()
            );
        }
    }
}

#[test]
fn library_code_logs_with_tracing_not_print() {
    for file in PLAIN_LIBRARIES
        .into_iter()
        .chain(["protocol"])
        .flat_map(|krate| crate_sources(&format!("{krate}/src")))
    {
        for (number, line) in read(&file).lines().enumerate() {
            let code = line.trim_start();
            assert!(
                !(code.starts_with("println!") || code.starts_with("eprintln!") || code.starts_with("dbg!")),
                "{}:{}: library code prints; use `tracing`",
                file.display(),
                number + 1
            );
        }
    }
}

#[test]
fn only_the_model_crate_depends_on_burn() {
    for krate in WORKSPACE.into_iter().filter(|k| *k != "model") {
        let deps = normal_dependencies(krate);
        assert!(
            !deps
                .lines()
                .any(|l| l.trim_start().starts_with("burn") || l.trim_start().starts_with("cubecl")),
            "{krate}/Cargo.toml depends on burn: only fedlnm-model may"
        );
    }
    for krate in ["stats", "tensors", "secagg", "shared", "protocol", "aggregator"] {
        let closure = dependency_closure(&format!("fedlnm-{krate}"));
        assert!(
            !closure
                .iter()
                .any(|c| c.starts_with("burn") || c == "fedlnm-model"),
            "fedlnm-{krate} builds burn"
        );
    }
}

#[test]
fn burn_is_named_only_in_the_model_crate() {
    for file in WORKSPACE
        .into_iter()
        .filter(|k| *k != "model" && *k != "tests")
        .flat_map(|krate| crate_sources(&format!("{krate}/src")))
    {
        for (number, line) in read(&file).lines().enumerate() {
            assert!(
                !line.contains("burn::"),
                "{}:{}: burn types belong in fedlnm-model only",
                file.display(),
                number + 1
            );
        }
    }
}

/// The crates (names) that `krate` builds with, as `cargo tree` resolves its normal dependencies when
/// it is built on its own (feature unification included).
fn dependency_closure(krate: &str) -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = std::process::Command::new(cargo)
        .current_dir(workspace_root())
        .args([
            "tree", "--locked", "-p", krate, "-e", "normal", "--prefix", "none", "--format", "{p}",
        ])
        .output()
        .unwrap_or_else(|e| panic!("cannot run cargo tree: {e}"));
    assert!(
        output.status.success(),
        "cargo tree -p {krate} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut crates: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    crates.sort();
    crates.dedup();
    crates
}

#[test]
fn the_hospital_binary_holds_no_server_code() {
    let node = dependency_closure("fedlnm-node");
    assert!(node.iter().any(|c| c == "fedlnm-protocol"), "{node:?}");
    for server in [
        "fedlnm-aggregator",
        "fedlnm-sim",
        "rcgen",
        "plotters",
        "prometheus-client",
        "axum",
    ] {
        assert!(
            !node.iter().any(|c| c == server),
            "fedlnm-node builds {server}: server code belongs to the aggregator or the simulation"
        );
    }
}

#[test]
fn the_aggregator_never_builds_burn() {
    let aggregator = dependency_closure("fedlnm-aggregator");
    assert!(aggregator.iter().any(|c| c == "fedlnm-shared"), "{aggregator:?}");
    for crate_name in &aggregator {
        assert!(
            !crate_name.starts_with("burn") && !crate_name.starts_with("cubecl"),
            "fedlnm-aggregator builds {crate_name}"
        );
    }
    let protocol = dependency_closure("fedlnm-protocol");
    assert!(
        !protocol.iter().any(|c| c.starts_with("burn")),
        "fedlnm-protocol builds burn: {protocol:?}"
    );
}

#[test]
fn only_the_protocol_crate_depends_on_the_grpc_stack() {
    for krate in WORKSPACE
        .into_iter()
        .filter(|k| *k != "protocol" && *k != "tests")
    {
        let deps = normal_dependencies(krate);
        for forbidden in ["tonic", "prost", "axum", "hyper"] {
            assert!(
                !deps.lines().any(|l| l.trim_start().starts_with(forbidden)),
                "{krate}/Cargo.toml depends on {forbidden}: only fedlnm-protocol speaks gRPC/HTTP"
            );
        }
    }
    for file in WORKSPACE
        .into_iter()
        .filter(|k| *k != "protocol" && *k != "tests")
        .flat_map(|krate| crate_sources(&format!("{krate}/src")))
    {
        let text = read(&file);
        for generated in ["tonic::", "prost::", "generated::"] {
            assert!(
                !text.contains(generated),
                "{} names {generated}: the binaries and the round logic speak fedlnm-protocol's typed messages",
                file.display()
            );
        }
    }
}

#[test]
fn one_build_script_compiles_the_protocol() {
    let mut scripts = Vec::new();
    for krate in WORKSPACE {
        let script = workspace_root().join(krate).join("build.rs");
        if script.exists() {
            scripts.push(script);
        }
    }
    assert_eq!(
        scripts,
        [workspace_root().join("protocol/build.rs")],
        "only fedlnm-protocol has a build script"
    );
    assert!(read(&scripts[0]).contains("fedlnm.proto"));
}

/// Files allowed past the length limit, each with the reason.
const LONG_FILES: &[(&str, &str)] = &[
    (
        "stats/src/logistic.rs",
        "one Newton-Raphson engine for the local and the federated fit: the invariant that both diagnose \
         separation from the same sums is easier to keep in one file",
    ),
    (
        "shared/src/synth/render.rs",
        "one picture generator whose drawing steps share the same random stream, in order",
    ),
];

#[test]
fn no_source_file_is_longer_than_600_lines_without_a_reason() {
    for krate in WORKSPACE.into_iter().filter(|k| *k != "tests") {
        for file in crate_sources(&format!("{krate}/src")) {
            let path = file.to_string_lossy().replace('\\', "/");
            if LONG_FILES.iter().any(|(long, _)| path.ends_with(long)) {
                continue;
            }
            // Unit tests at the end of a file do not count.
            let lines = read(&file)
                .lines()
                .take_while(|line| !line.starts_with("#[cfg(test)]"))
                .count();
            assert!(
                lines <= 600,
                "{} has {lines} lines of code: split it by job, or state why in LONG_FILES",
                file.display()
            );
        }
    }
}
