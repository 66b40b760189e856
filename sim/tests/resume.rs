//! `fedlnm-sim --design methods --resume`, as a researcher meets it: the binary as its own OS process,
//! killed with SIGKILL in the middle of a federated study, then run again with `--resume`; and a run
//! that stopped between two single-shot models. Each resumed run must give the very table of a run
//! never stopped (same seed, same machine), reusing what was finished (the synthetic sites, a trained
//! model: their files untouched) and making again what was not. Resuming with other arguments is
//! refused, naming the argument.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is a failed test.

use fedlnm_aggregator::store::RoundStore;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant, SystemTime};

/// A tiny comparison: two training sites of 48 patients, one federated method over six rounds,
/// and the single-shot models (centralised, each site alone) on the same patients.
const ARGS: [&str; 16] = [
    "--methods",
    "fedavg-secure",
    "--rounds",
    "6",
    "--train-sites",
    "2",
    "--validate-sites",
    "1",
    "--patients",
    "48",
    "--image-size",
    "32",
    "--base-width",
    "8",
    "--local-epochs",
    "1",
];

/// `fedlnm-sim` with [`ARGS`], `--design methods --seed 5` unless `extra` gives its own.
fn command(out: &Path, extra: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fedlnm-sim"));
    command.arg("--out").arg(out).args(ARGS).args(extra);
    for (option, default) in [("--design", "methods"), ("--seed", "5")] {
        if !extra.contains(&option) {
            command.args([option, default]);
        }
    }
    command.env("FEDLNM_LOG", "warn");
    command
}

fn run(out: &Path, extra: &[&str]) -> Output {
    command(out, extra).output().unwrap()
}

fn succeeded(output: &Output) {
    assert!(
        output.status.success(),
        "fedlnm-sim failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The design's rows without their wall times (which differ from run to run).
fn rows(out: &Path) -> Vec<serde_json::Value> {
    let bytes = std::fs::read(out.join("design.json")).unwrap();
    let mut rows: Vec<serde_json::Value> = serde_json::from_slice(&bytes).unwrap();
    for row in &mut rows {
        row.as_object_mut().unwrap().remove("seconds");
    }
    rows
}

fn modified(file: &Path) -> SystemTime {
    std::fs::metadata(file).unwrap().modified().unwrap()
}

fn committed_rounds(state: &Path) -> Vec<u64> {
    RoundStore::open_existing(state)
        .and_then(|store| store.committed_rounds())
        .unwrap_or_default()
}

#[test]
fn a_killed_methods_run_resumes_to_the_table_of_a_run_never_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let reference = dir.path().join("reference");
    succeeded(&run(&reference, &[]));
    let expected = rows(&reference);
    let names: Vec<&str> = expected
        .iter()
        .map(|row| row["method"].as_str().unwrap())
        .collect();
    assert_eq!(
        names[..4],
        ["centralised", "S1 alone", "S2 alone", "FedAvg (secure)"]
    );

    // Killed (SIGKILL) once the federated study has committed its first round of six.
    let out = dir.path().join("run");
    let mut child = command(&out, &[]).spawn().unwrap();
    let state = out.join("study-1/study/aggregator/state");
    let deadline = Instant::now() + Duration::from_secs(600);
    while !committed_rounds(&state).contains(&1) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be killed"
        );
        assert!(Instant::now() < deadline, "no round committed in 10 minutes");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        out.join("progress/data.json").is_file(),
        "the sites were finished"
    );
    assert!(!out.join("progress/study-1.json").exists(), "the study was not");
    assert!(!out.join("design.json").exists());
    let patients = out.join("data/S1/patients.csv");
    let generated = modified(&patients);

    // Resumed: the sites reused, the study run again from its start, the table a whole run's.
    succeeded(&run(&out, &["--resume"]));
    assert_eq!(
        modified(&patients),
        generated,
        "the sites are not generated again"
    );
    assert_eq!(
        committed_rounds(&state),
        (0..=6).collect::<Vec<u64>>(),
        "round 0 is the initial model"
    );
    assert_eq!(rows(&out), expected);

    // Stopped between two single-shot models: the finished ones and the study are reused, the
    // unrecorded one trained again (to the same weights).
    std::fs::remove_file(out.join("design.json")).unwrap();
    std::fs::remove_file(out.join("progress/S2-alone.json")).unwrap();
    let kept = [
        out.join("models/centralised.safetensors"),
        out.join("models/S1-alone.safetensors"),
        out.join("progress/study-1.json"),
    ];
    let before: Vec<SystemTime> = kept.iter().map(|file| modified(file)).collect();
    let retrained = out.join("models/S2-alone.safetensors");
    let weights = std::fs::read(&retrained).unwrap();
    let trained_at = modified(&retrained);
    succeeded(&run(&out, &["--resume"]));
    let after: Vec<SystemTime> = kept.iter().map(|file| modified(file)).collect();
    assert_eq!(after, before, "finished pieces are reused, not made again");
    assert_ne!(
        modified(&retrained),
        trained_at,
        "the unrecorded model is trained again"
    );
    assert_eq!(std::fs::read(&retrained).unwrap(), weights);
    assert_eq!(rows(&out), expected);

    // Other arguments are refused, naming what differs; nothing is touched.
    let refused = run(&out, &["--resume", "--seed", "6"]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("seed: 5, → seed: 6,"), "{stderr}");
    assert_eq!(rows(&out), expected);
    // And --resume means nothing to a design without pieces.
    let single = run(&dir.path().join("single"), &["--resume", "--design", "single"]);
    assert!(!single.status.success());
    assert!(String::from_utf8_lossy(&single.stderr).contains("--design methods"));
}
