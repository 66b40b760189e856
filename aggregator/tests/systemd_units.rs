//! The systemd units a site or the central team installs (`deploy/systemd/`), checked offline:
//! - `systemd-analyze verify` (no systemd needed as PID 1: `--man=no --generators=no`) accepts both
//!   units, and each with its example drop-ins, without a warning; their ExecStart points at the real
//!   binaries built for this test, so it also checks that those exist and are executable;
//! - the shipped files hold the hardening directives (parsed, section by section), and their
//!   ExecStart command lines are accepted by the binaries' own parsers;
//! - `systemd-analyze security --offline=yes` (systemd's own reading of the same files) finds no
//!   exposure besides the deliberate ones listed here, and rates each unit at most 2.0 ("OK");
//! - the node trains and the aggregator provisions a study with writable memory never executable
//!   (the kernel's `PR_SET_MDWE`, what `MemoryDenyWriteExecute=yes` enforces), run through Python.
//!
//! Not checked here: that the sandbox works when systemd starts the units for real (namespaces,
//! seccomp's system-call filter, the `fedlnm` user, folder permissions): that needs systemd as PID 1.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is a failed test.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use common::built_binary;

/// The shipped units: file name, the binary their ExecStart runs, the folders they may write.
const UNITS: [(&str, &str, &str); 2] = [
    ("fedlnm-node.service", "fedlnm-node", "fedlnm-node"),
    (
        "fedlnm-aggregator.service",
        "fedlnm-aggregator",
        "fedlnm-aggregator",
    ),
];

/// Directives every unit must have in `[Service]`, with their value (`None`: any non-empty value).
const HARDENING: &[(&str, Option<&str>)] = &[
    ("Restart", Some("on-failure")),
    ("RestartSec", None),
    ("RestartPreventExitStatus", Some("2")),
    ("User", Some("fedlnm")),
    ("Group", Some("fedlnm")),
    ("ProtectSystem", Some("strict")),
    ("ProtectHome", Some("yes")),
    ("PrivateTmp", Some("yes")),
    ("PrivateDevices", Some("yes")),
    ("NoNewPrivileges", Some("yes")),
    ("CapabilityBoundingSet", Some("")),
    ("AmbientCapabilities", Some("")),
    ("RestrictAddressFamilies", Some("AF_INET AF_INET6 AF_UNIX")),
    ("SystemCallFilter", Some("@system-service")),
    ("SystemCallArchitectures", Some("native")),
    ("MemoryDenyWriteExecute", Some("yes")),
    ("KillSignal", Some("SIGTERM")),
    ("TimeoutStopSec", None),
    ("UMask", Some("0077")),
];

/// What `systemd-analyze security` may find unset, and why each is so.
const DELIBERATE_EXPOSURES: &[(&str, &str)] = &[
    (
        "RootDirectoryOrRootImage",
        "the binaries run from the host, installed by the package manager or by hand",
    ),
    (
        "RestrictAddressFamilies_AF_INET_INET6",
        "the node dials the aggregator; the aggregator listens",
    ),
    (
        "RestrictAddressFamilies_AF_UNIX",
        "name resolution (nss, systemd-resolved) and the journal",
    ),
    ("PrivateNetwork", "both talk over the network"),
    (
        "IPAddressDeny",
        "the aggregator's and the sites' addresses are each study's own (a drop-in can add them)",
    ),
    (
        "PrivateUsers",
        "the site data and kit are granted to the fedlnm user and group by the host's ids",
    ),
    (
        "ProcSubset",
        "not tried under systemd yet: the thread pools read the CPU count and cgroup limits",
    ),
    (
        "DeviceAllow",
        "what ProtectClock= itself allows (char-rtc, read-only)",
    ),
];

#[test]
fn systemd_analyze_verify_accepts_the_units_and_their_drop_ins_without_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let bare = runnable_copies(&dir.path().join("bare"), false);
    let with_drop_ins = runnable_copies(&dir.path().join("drop-ins"), true);
    for (what, files) in [
        ("units", &bare),
        ("units with their example drop-ins", &with_drop_ins),
    ] {
        let output = Command::new(systemd_analyze())
            .args(["verify", "--man=no", "--generators=no"])
            .args(files)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{what}: {:?}\n{stderr}", output.status);
        let about_ours: Vec<_> = stderr
            .lines()
            .filter(|line| line.contains("fedlnm") || line.contains(&*dir.path().to_string_lossy()))
            .collect();
        assert!(about_ours.is_empty(), "{what}: systemd-analyze warns:\n{stderr}");
    }
    // The drop-ins were read (the CUDA one turns MemoryDenyWriteExecute off), so verify saw them.
    let node_with_drop_ins = &with_drop_ins[0];
    assert_eq!(
        security_checks(node_with_drop_ins)
            .iter()
            .find(|(field, _)| field == "MemoryDenyWriteExecute"),
        Some(&("MemoryDenyWriteExecute".to_owned(), false)),
        "the example drop-ins were not loaded"
    );
}

#[test]
fn the_shipped_units_hold_the_hardening_directives() {
    for (unit, binary, folder) in UNITS {
        let directives = parse_unit(&std::fs::read_to_string(shipped(unit)).unwrap());
        let service = |key: &str| -> Vec<&str> {
            directives
                .iter()
                .filter(|(section, k, _)| section == "Service" && k == key)
                .map(|(_, _, value)| value.as_str())
                .collect()
        };
        for &(key, expected) in HARDENING {
            let values = service(key);
            match expected {
                Some(value) => assert!(
                    values.contains(&value),
                    "{unit}: {key}={value} missing (has {values:?})"
                ),
                None => assert!(
                    values.iter().any(|value| !value.is_empty()),
                    "{unit}: {key}= missing (has {values:?})"
                ),
            }
        }
        assert_eq!(service("StateDirectory"), [folder], "{unit}");
        assert_eq!(
            service("WorkingDirectory"),
            [format!("/var/lib/{folder}").as_str()],
            "{unit}"
        );
        assert!(
            service("ReadWritePaths").is_empty(),
            "{unit}: StateDirectory is its only writable folder"
        );
        assert_eq!(
            directives
                .iter()
                .filter(|(section, key, _)| section == "Install" && key == "WantedBy")
                .map(|(_, _, value)| value.as_str())
                .collect::<Vec<_>>(),
            ["multi-user.target"],
            "{unit}"
        );

        // ExecStart runs the installed binary with a command line that binary accepts.
        let exec_start = service("ExecStart");
        assert_eq!(exec_start.len(), 1, "{unit}: {exec_start:?}");
        let mut words = exec_start[0].split_whitespace();
        assert_eq!(
            words.next(),
            Some(format!("/usr/local/bin/{binary}").as_str()),
            "{unit}"
        );
        let args: Vec<&str> = words.collect();
        let output = Command::new(built_binary(binary))
            .args(&args)
            .arg("--help")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{unit}: `{binary} {}` is refused:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn systemd_finds_no_exposure_but_the_deliberate_ones() {
    let dir = tempfile::tempdir().unwrap();
    for file in runnable_copies(dir.path(), false) {
        let unset: Vec<String> = security_checks(&file)
            .into_iter()
            .filter(|(_, set)| !set)
            .map(|(field, _)| field)
            .filter(|field| {
                !DELIBERATE_EXPOSURES
                    .iter()
                    .any(|(deliberate, _)| deliberate == field)
            })
            .collect();
        assert!(
            unset.is_empty(),
            "{}: systemd-analyze security finds {unset:?} unset: harden the unit, or list it in \
             DELIBERATE_EXPOSURES with the reason",
            file.display()
        );
        // Exposure at most 2.0 (the threshold is in tenths).
        let status = Command::new(systemd_analyze())
            .args(["security", "--offline=yes", "--threshold=20", "--no-pager"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            status.status.success(),
            "{}:\n{}",
            file.display(),
            String::from_utf8_lossy(&status.stdout)
        );
    }
}

#[test]
fn the_node_trains_and_the_aggregator_provisions_with_memory_never_writable_and_executable() {
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("site");
    let model_config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/model-tiny.toml");
    let node = built_binary("fedlnm-node");
    let aggregator = built_binary("fedlnm-aggregator");
    let trained = dir.path().join("trained");
    let study = dir.path().join("study");
    let runs: [(&Path, Vec<&OsStr>); 3] = [
        (
            &node,
            vec![
                "synth".as_ref(),
                "--site".as_ref(),
                "S1".as_ref(),
                "--patients".as_ref(),
                "24".as_ref(),
                "--image-size".as_ref(),
                "64".as_ref(),
                "--out".as_ref(),
                site.as_os_str(),
            ],
        ),
        (
            &node,
            vec![
                "train".as_ref(),
                "--data".as_ref(),
                site.as_os_str(),
                "--config".as_ref(),
                model_config.as_os_str(),
                "--epochs".as_ref(),
                "1".as_ref(),
                "--out".as_ref(),
                trained.as_os_str(),
            ],
        ),
        (
            &aggregator,
            vec![
                "provision".as_ref(),
                "--study".as_ref(),
                "thyroid".as_ref(),
                "--sites".as_ref(),
                "S1,S2".as_ref(),
                "--out".as_ref(),
                study.as_os_str(),
            ],
        ),
    ];
    for (binary, args) in runs {
        let output = Command::new(python())
            .args(["-c", WITHOUT_WRITABLE_EXECUTABLE_MEMORY])
            .arg(binary)
            .args(&args)
            .env("FEDLNM_LOG", "warn")
            .output()
            .expect("cannot start python3 (set FEDLNM_PYTHON)");
        assert!(
            output.status.success(),
            "{} {args:?} under PR_SET_MDWE: {:?}\n{}",
            binary.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    assert!(trained.join("model.safetensors").is_file());
    assert!(study.join("aggregator").join("aggregator.toml").is_file());
}

/// Python: refuse writable-and-executable memory for this process and what it executes (Linux 6.3+),
/// check that the kernel now refuses such a mapping, then exec argv[1:].
const WITHOUT_WRITABLE_EXECUTABLE_MEMORY: &str = r#"
import ctypes, mmap, os, sys
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
    sys.exit("prctl(PR_SET_MDWE) failed (errno %d): this check needs Linux 6.3 or later" % ctypes.get_errno())
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    sys.exit("PR_SET_MDWE is set but a writable executable mapping was allowed")
except OSError:
    pass
os.execv(sys.argv[1], sys.argv[1:])
"#;

/// Copies of the shipped units under `dir` whose ExecStart runs the binaries built for this test (verify
/// checks that they exist), with the example drop-ins beside them when asked; node first.
fn runnable_copies(dir: &Path, drop_ins: bool) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    UNITS
        .iter()
        .map(|(unit, binary, _)| {
            let text = std::fs::read_to_string(shipped(unit)).unwrap();
            let installed = format!("ExecStart=/usr/local/bin/{binary} ");
            assert!(text.contains(&installed), "{unit}: no `{installed}`");
            let built = format!("ExecStart={} ", built_binary(binary).display());
            let copy = dir.join(unit);
            std::fs::write(&copy, text.replace(&installed, &built)).unwrap();
            if drop_ins {
                let examples = shipped(&format!("examples/{unit}.d"));
                let target = dir.join(format!("{unit}.d"));
                std::fs::create_dir_all(&target).unwrap();
                for entry in std::fs::read_dir(&examples).unwrap() {
                    let entry = entry.unwrap();
                    std::fs::copy(entry.path(), target.join(entry.file_name())).unwrap();
                }
            }
            copy
        })
        .collect()
}

/// `systemd-analyze security --offline=yes` of `unit`: each check's JSON field and whether it is set.
fn security_checks(unit: &Path) -> Vec<(String, bool)> {
    let output = Command::new(systemd_analyze())
        .args(["security", "--offline=yes", "--json=short", "--no-pager"])
        .arg(unit)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}: {}",
        unit.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let checks: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    assert!(!checks.is_empty(), "{}: no security checks", unit.display());
    checks
        .iter()
        .map(|check| {
            (
                check["json_field"].as_str().unwrap().to_owned(),
                check["set"].as_bool().unwrap(),
            )
        })
        .collect()
}

/// A unit file's directives as (section, key, value), in order; comments and blank lines left out.
fn parse_unit(text: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut directives = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        assert!(
            !line.ends_with('\\'),
            "line {}: a continued line: keep directives on one line",
            n + 1
        );
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("line {}: not `key=value`: {line}", n + 1));
        assert!(
            !section.is_empty(),
            "line {}: a directive before any section",
            n + 1
        );
        directives.push((section.clone(), key.trim().to_owned(), value.trim().to_owned()));
    }
    directives
}

fn shipped(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/systemd")
        .join(name)
}

fn systemd_analyze() -> &'static str {
    const PATH: &str = "systemd-analyze";
    let found = Command::new(PATH).arg("--version").output();
    assert!(
        found.is_ok_and(|output| output.status.success()),
        "systemd-analyze is missing (Debian/Ubuntu: `apt-get install systemd`)"
    );
    PATH
}

fn python() -> String {
    std::env::var("FEDLNM_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}
