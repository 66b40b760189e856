//! Benchmark: AUC + DeLong CI, and the full binary report (`binary_metrics`), on 10⁶ and 10⁷ rows on
//! the machine's cores (in fixed blocks: the results do not depend on the thread count), against
//! scikit-learn's `roc_auc_score` alone, timed on the same rows in the same run. Prints a markdown
//! table.
//!
//! Run: `cargo bench -p fedlnm-shared --bench auc` (needs `python3` with scikit-learn for the
//! baseline column; set `FEDLNM_PYTHON` to choose the interpreter).
#![allow(clippy::unwrap_used, clippy::expect_used)] // A benchmark harness: a panic is a failed run.

use fedlnm_shared::stats::binary::{auc_delong, binary_metrics};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::hint::black_box;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

const REPEATS: usize = 3;

fn main() {
    let sizes: Vec<usize> = match std::env::var("FEDLNM_BENCH_ROWS") {
        Ok(list) => list
            .split(',')
            .map(|n| {
                n.trim()
                    .parse()
                    .expect("FEDLNM_BENCH_ROWS: comma-separated row counts")
            })
            .collect(),
        Err(_) => vec![1_000_000, 10_000_000],
    };
    let dir = tempfile::tempdir().unwrap();
    println!(
        "| rows | fedlnm AUC + DeLong CI (s) | fedlnm all binary metrics (s) | sklearn roc_auc_score (s) | speed-up, AUC + CI vs sklearn | speed-up, all binary metrics vs sklearn |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for n in sizes {
        let (y, s) = cohort(n);
        let ours = best_of(|| {
            black_box(auc_delong(black_box(&y), black_box(&s)).unwrap());
        });
        let all = best_of(|| {
            black_box(binary_metrics(black_box(&y), black_box(&s)).unwrap());
        });
        let estimate = auc_delong(&y, &s).unwrap().unwrap();
        let sklearn = sklearn_seconds(dir.path(), &y, &s, estimate.auc);
        let (sk, ratio, all_ratio) = match sklearn {
            Some(seconds) => (
                format!("{seconds:.3}"),
                format!("{:.1}×", seconds / ours),
                format!("{:.1}×", seconds / all),
            ),
            None => (
                "n/a (no python3 with scikit-learn)".to_owned(),
                "n/a".to_owned(),
                "n/a".to_owned(),
            ),
        };
        println!("| {n} | {ours:.3} | {all:.3} | {sk} | {ratio} | {all_ratio} |");
    }
}

/// A realistic score column: ~37% positives, model-like scores with 7 decimals (some ties).
fn cohort(n: usize) -> (Vec<bool>, Vec<f64>) {
    let mut rng = ChaCha8Rng::seed_from_u64(n as u64);
    (0..n)
        .map(|_| {
            let y = rng.random::<f64>() < 0.37;
            let logit: f64 = rng.random::<f64>() * 4.0 - 2.0 + if y { 1.2 } else { 0.0 };
            let score = (1.0 / (1.0 + (-logit).exp()) * 1e7).round() / 1e7;
            (y, score)
        })
        .unzip()
}

fn best_of(mut run: impl FnMut()) -> f64 {
    (0..REPEATS)
        .map(|_| {
            let start = Instant::now();
            run();
            start.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// Best-of-REPEATS seconds of `roc_auc_score` on the same rows; checks it agrees with our AUC.
fn sklearn_seconds(dir: &Path, y: &[bool], s: &[f64], our_auc: f64) -> Option<f64> {
    let (y_file, s_file) = (dir.join("y.u8"), dir.join("s.f64"));
    std::fs::write(&y_file, y.iter().map(|&v| u8::from(v)).collect::<Vec<u8>>()).unwrap();
    std::fs::write(
        &s_file,
        s.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>(),
    )
    .unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/sklearn_auc_timing.py");
    let python = std::env::var("FEDLNM_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let output = Command::new(python)
        .arg(script)
        .arg(&y_file)
        .arg(&s_file)
        .arg(REPEATS.to_string())
        .output()
        .ok()?;
    if !output.status.success() {
        eprintln!(
            "sklearn baseline failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        return None;
    }
    let result: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
    let sklearn_auc = result["auc"].as_f64()?;
    assert!(
        (sklearn_auc - our_auc).abs() < 1e-9,
        "AUC disagrees with sklearn: {our_auc} vs {sklearn_auc}"
    );
    result["seconds"].as_f64()
}
