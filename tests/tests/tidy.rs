//! Architecture invariants that can be checked by reading the source tree (in the spirit of
//! rust-analyzer's `tidy`): each is a line of ARCHITECTURE.md, each failure names the file.

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

#[test]
fn every_module_starts_with_a_doc_line() {
    for krate in ["shared", "node", "aggregator", "tests"] {
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
    let deps = normal_dependencies("shared");
    for forbidden in ["tokio", "tonic", "hyper", "reqwest"] {
        assert!(
            !deps.lines().any(|l| l.trim_start().starts_with(forbidden)),
            "shared/Cargo.toml depends on {forbidden}, but shared does no network I/O"
        );
    }
    for file in crate_sources("shared/src") {
        let text = read(&file);
        for socket in ["TcpStream", "TcpListener", "UdpSocket"] {
            assert!(
                !text.contains(socket),
                "{} uses {socket}, but shared does no network I/O",
                file.display()
            );
        }
    }
}

#[test]
fn library_code_logs_with_tracing_not_print() {
    for file in crate_sources("shared/src") {
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
fn aggregator_never_enables_the_model_feature() {
    let deps = normal_dependencies("aggregator");
    let shared = deps
        .lines()
        .find(|l| l.trim_start().starts_with("fedlnm-shared"))
        .unwrap_or_default();
    assert!(
        !shared.contains("model") && !shared.contains("cuda"),
        "aggregator/Cargo.toml enables the burn model in fedlnm-shared: {shared}"
    );
}

#[test]
fn burn_is_named_only_in_the_model_and_training_modules() {
    for file in crate_sources("shared/src")
        .into_iter()
        .chain(crate_sources("node/src"))
    {
        let path = file.to_string_lossy().replace('\\', "/");
        let allowed = path.contains("/shared/src/model/") || path.contains("/shared/src/train/");
        if allowed {
            continue;
        }
        for (number, line) in read(&file).lines().enumerate() {
            assert!(
                !line.contains("burn::"),
                "{}:{}: burn types belong in shared/src/model or shared/src/train only",
                file.display(),
                number + 1
            );
        }
    }
}
