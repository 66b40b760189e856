//! `fedlnm-node stats binary` and `stats kappa` against independent reference values computed by
//! scikit-learn, statsmodels and O(m·n) numpy code (`tests/reference/binary_kappa_reference.py`) on
//! data generated here. Tolerances are those of the statistics issue: 1e-9 for AUC, kappa and rates,
//! 1e-6 relative for standard errors.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is a failed test.

mod common;

use common::{assert_close, assert_close_relative, assert_input_error, fedlnm_node_json, python_reference};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Writes a CSV with `header` and rows, returning its path.
fn write_csv(dir: &Path, name: &str, header: &str, rows: &[String]) -> PathBuf {
    let mut text = format!("{header}\n");
    for row in rows {
        writeln!(text, "{row}").unwrap();
    }
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Scores of n patients with a given prevalence and separation; `decimals` coarsens them (ties).
fn scored(rng: &mut ChaCha8Rng, n: usize, prevalence: f64, shift: f64, decimals: i32) -> ScoredRows {
    let scale = 10_f64.powi(decimals);
    (0..n)
        .map(|_| {
            let y = u8::from(rng.random::<f64>() < prevalence);
            let signal = rng.random::<f64>() + shift * f64::from(y);
            let a = (1.0 / (1.0 + (-(signal - 0.5) * 3.0).exp()) * scale).round() / scale;
            let b = ((a + rng.random::<f64>() * 0.6) / 1.6 * scale).round() / scale;
            (y, a, b)
        })
        .collect()
}

/// (outcome, score, second score) rows.
type ScoredRows = Vec<(u8, f64, f64)>;

fn binary_cases(rng: &mut ChaCha8Rng) -> Vec<(&'static str, ScoredRows)> {
    let fixed = |rows: &[(u8, f64)]| rows.iter().map(|&(y, s)| (y, s, 1.0 - s)).collect::<Vec<_>>();
    vec![
        ("random_continuous", scored(rng, 400, 0.37, 0.6, 12)),
        ("random_many_ties", scored(rng, 300, 0.3, 0.4, 1)),
        ("weak_signal_below_half", scored(rng, 200, 0.5, -0.3, 3)),
        ("large", scored(rng, 3000, 0.4, 0.5, 4)),
        (
            "one_positive",
            fixed(&[(1, 0.7), (0, 0.2), (0, 0.9), (0, 0.4), (0, 0.4)]),
        ),
        ("one_negative", fixed(&[(0, 0.7), (1, 0.2), (1, 0.9), (1, 0.4)])),
        ("one_class_only", fixed(&[(1, 0.7), (1, 0.2), (1, 0.9)])),
        ("negatives_only", fixed(&[(0, 0.7), (0, 0.2), (0, 0.5)])),
        (
            "perfect_separation",
            fixed(&[(0, 0.1), (0, 0.3), (0, 0.2), (1, 0.8), (1, 0.6), (1, 0.95)]),
        ),
        (
            "all_scores_equal",
            fixed(&[(0, 0.4), (1, 0.4), (0, 0.4), (1, 0.4), (1, 0.4)]),
        ),
        ("youden_tie", fixed(&[(0, 0.2), (1, 0.4), (0, 0.5), (1, 0.6)])),
        (
            "scores_at_bounds",
            fixed(&[
                (0, 0.0),
                (1, 1.0),
                (0, 1.0),
                (1, 0.0),
                (1, 1.0),
                (0, 0.5),
                (1, 0.5),
            ]),
        ),
    ]
}

fn assert_binary_matches(case: &str, ours: &Value, reference: &Value) {
    for key in [
        "n",
        "n_pos",
        "n_neg",
        "lnm_rate",
        "auc",
        "auc_ci_lower",
        "auc_ci_upper",
        "youden_threshold",
        "youden_sensitivity",
        "youden_specificity",
        "youden_accuracy",
        "youden_j",
        "average_precision",
        "brier",
        "sensitivity_at_0.5",
        "specificity_at_0.5",
        "accuracy_at_0.5",
    ] {
        assert_close(&format!("{case}.{key}"), &ours[key], &reference[key], 1e-9);
    }
    assert_close_relative(
        &format!("{case}.auc_var"),
        &ours["auc_var"],
        &reference["auc_var"],
        1e-6,
    );
    // Logistic recalibration against statsmodels' Logit (Newton, tol 1e-12): both undefined (one
    // class, separation) or equal.
    for key in [
        "calibration_intercept",
        "calibration_slope",
        "calibration_slope_se",
    ] {
        assert_close(&format!("{case}.{key}"), &ours[key], &reference[key], 1e-7);
    }
    // Calibration-in-the-large against statsmodels' GLM with offset, where that converges (not with
    // offsets at the clipping bounds, where it reports 6e14).
    if !reference["calibration_in_the_large"].is_null() {
        let key = "calibration_in_the_large";
        assert_close(&format!("{case}.{key}"), &ours[key], &reference[key], 1e-7);
    }
    for bound in 0..2 {
        let what = format!("{case}.lnm_rate_ci[{bound}]");
        assert_close(
            &what,
            &ours["lnm_rate_ci"][bound],
            &reference["lnm_rate_ci"][bound],
            1e-9,
        );
    }
    let at_half = &ours["table_at_half"];
    assert_close(
        &format!("{case}.ppv"),
        &at_half["ppv"]["value"],
        &reference["ppv_at_0.5"],
        1e-9,
    );
    assert_close(
        &format!("{case}.npv"),
        &at_half["npv"]["value"],
        &reference["npv_at_0.5"],
        1e-9,
    );
    assert_close(
        &format!("{case}.ppv_ci"),
        &at_half["ppv"]["ci_lower"],
        &reference["ppv_ci_at_0.5"][0],
        1e-9,
    );
    if let (Some(roc), Some(our_roc)) = (reference["roc"].as_array(), ours["roc"].as_array()) {
        assert_eq!(our_roc.len(), roc.len(), "{case}: ROC points");
        for (i, (a, e)) in our_roc.iter().zip(roc).enumerate() {
            for key in ["threshold", "fpr", "tpr"] {
                assert_close(&format!("{case}.roc[{i}].{key}"), &a[key], &e[key], 1e-12);
            }
        }
    }
    if let Some(paired) = reference.get("paired_delong") {
        let ours = &ours["paired_delong"];
        assert_close(
            &format!("{case}.paired.delta"),
            &ours["delta"],
            &paired["delta"],
            1e-9,
        );
        assert_close_relative(&format!("{case}.paired.se"), &ours["se"], &paired["se"], 1e-6);
        assert_close_relative(&format!("{case}.paired.z"), &ours["z"], &paired["z"], 1e-6);
        assert_close_relative(&format!("{case}.paired.p"), &ours["p"], &paired["p"], 1e-6);
    }
}

#[test]
fn binary_metrics_match_sklearn_and_delong_by_pairs() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(20_261_123);
    let cases = binary_cases(&mut rng);
    let files: Vec<PathBuf> = cases
        .iter()
        .map(|(name, rows)| {
            let lines: Vec<String> = rows.iter().map(|(y, a, b)| format!("{y},{a},{b}")).collect();
            write_csv(
                dir.path(),
                &format!("{name}.csv"),
                "y_true,y_score,y_score_b",
                &lines,
            )
        })
        .collect();
    let mut args: Vec<&Path> = vec![Path::new("binary")];
    args.extend(files.iter().map(PathBuf::as_path));
    let reference = python_reference("binary_kappa_reference.py", &args);
    for ((name, _), file) in cases.iter().zip(&files) {
        let ours = fedlnm_node_json(&[
            "stats",
            "binary",
            "--input",
            file.to_str().unwrap(),
            "--compare",
            "y_score_b",
            "--curves",
        ]);
        assert_binary_matches(name, &ours["pooled"], &reference[format!("{name}.csv")]);
    }
}

#[test]
fn per_site_results_equal_each_site_alone() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut all = Vec::new();
    let mut site_files = Vec::new();
    for (site, prevalence) in [("S1", 0.3), ("S2", 0.5), ("S3", 0.2)] {
        let rows = scored(&mut rng, 150, prevalence, 0.5, 3);
        let lines: Vec<String> = rows.iter().map(|(y, a, _)| format!("{y},{a}")).collect();
        site_files.push((
            site,
            write_csv(dir.path(), &format!("{site}.csv"), "y_true,y_score", &lines),
        ));
        all.extend(rows.iter().map(|(y, a, _)| format!("{y},{a},{site}")));
    }
    let pooled = write_csv(dir.path(), "pooled.csv", "y_true,y_score,hospital", &all);
    let ours = fedlnm_node_json(&[
        "stats",
        "binary",
        "--input",
        pooled.to_str().unwrap(),
        "--site",
        "hospital",
    ]);
    let mut args: Vec<&Path> = vec![Path::new("binary"), &pooled];
    args.extend(site_files.iter().map(|(_, f)| f.as_path()));
    let reference = python_reference("binary_kappa_reference.py", &args);
    assert_binary_matches("pooled", &ours["pooled"], &reference["pooled.csv"]);
    for (site, _) in &site_files {
        assert_binary_matches(site, &ours["sites"][site], &reference[format!("{site}.csv")]);
    }
}

/// (name, k, (truth, prediction) rows).
type KappaCase = (&'static str, usize, Vec<(usize, usize)>);

fn kappa_cases(rng: &mut ChaCha8Rng) -> Vec<KappaCase> {
    let noisy = |rng: &mut ChaCha8Rng, n: usize, k: usize, allowed: &[usize]| -> Vec<(usize, usize)> {
        (0..n)
            .map(|_| {
                let truth = allowed[rng.random_range(0..allowed.len())];
                let step: i64 = if rng.random::<f64>() < 0.6 {
                    0
                } else {
                    rng.random_range(-2..=2)
                };
                let pred = (truth as i64 + step).clamp(0, k as i64 - 1) as usize;
                (truth, pred)
            })
            .collect()
    };
    let fixed = |rows: &[(usize, usize)]| rows.to_vec();
    vec![
        ("t_category_k7", 7, noisy(rng, 400, 7, &[0, 1, 2, 3, 4, 5, 6])),
        ("stage_k5", 5, noisy(rng, 250, 5, &[0, 1, 2, 3, 4])),
        // Truth never uses categories 2 and 4; predictions may (clamped steps).
        ("absent_in_truth", 5, noisy(rng, 150, 5, &[0, 1, 3])),
        // Neither rater uses the middle category 1 of N0 < N1a < N1b.
        (
            "absent_in_both",
            3,
            fixed(&[(0, 0), (2, 2), (0, 2), (2, 0), (2, 2), (0, 0), (2, 2)]),
        ),
        ("binary_k2", 2, noisy(rng, 120, 2, &[0, 1])),
        ("constant_identical", 4, fixed(&[(1, 1), (1, 1), (1, 1)])),
        ("constant_truth", 3, fixed(&[(1, 0), (1, 1), (1, 2), (1, 1)])),
        (
            "perfect_agreement",
            5,
            fixed(&[(0, 0), (3, 3), (4, 4), (3, 3), (1, 1)]),
        ),
    ]
}

#[test]
fn kappa_matches_sklearn_and_statsmodels() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(55);
    for (name, k, rows) in kappa_cases(&mut rng) {
        let lines: Vec<String> = rows.iter().map(|(t, p)| format!("{t},{p}")).collect();
        let file = write_csv(dir.path(), &format!("{name}.csv"), "y_true,y_pred", &lines);
        let k_text = k.to_string();
        let reference = python_reference(
            "binary_kappa_reference.py",
            &[Path::new("kappa"), Path::new(&k_text), &file],
        );
        let reference = &reference[format!("{name}.csv")];
        let ours = fedlnm_node_json(&[
            "stats",
            "kappa",
            "--input",
            file.to_str().unwrap(),
            "--k",
            &k_text,
        ]);
        assert_eq!(ours["confusion"], reference["confusion"], "{name}: confusion");
        assert_eq!(ours["n"], reference["n"], "{name}: n");
        for weighting in ["none", "linear", "quadratic"] {
            let (a, e) = (&ours[weighting], &reference[weighting]);
            for key in ["kappa", "ci_lower", "ci_upper"] {
                assert_close(&format!("{name}.{weighting}.{key}"), &a[key], &e[key], 1e-9);
            }
            for key in ["se", "se0"] {
                // Where the exact SE is 0, statsmodels' rounding leaves up to ~1e-8: compare absolutely there.
                if e[key].as_f64().is_some_and(|v| v < 1e-7) {
                    assert_close(&format!("{name}.{weighting}.{key}"), &a[key], &e[key], 1e-7);
                } else {
                    assert_close_relative(&format!("{name}.{weighting}.{key}"), &a[key], &e[key], 1e-6);
                }
            }
        }
    }
}

#[test]
fn bad_input_is_named_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let csv = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let empty = csv("empty.csv", "");
    let header_only = csv("header_only.csv", "y_true,y_score\n");
    let missing = csv("missing.csv", "truth,y_score\n1,0.5\n");
    let non_numeric = csv("non_numeric.csv", "y_true,y_score\n1,0.5\n0,high\n");
    let not_binary = csv("not_binary.csv", "y_true,y_score\n1,0.5\n2,0.3\n");
    let nan_score = csv("nan_score.csv", "y_true,y_score\n1,0.5\n0,NaN\n");
    let above_one = csv("above_one.csv", "y_true,y_score\n1,0.5\n0,0.2\n1,1.2\n");
    let ragged = csv("ragged.csv", "y_true,y_score\n1,0.5\n0\n");
    let stage = csv("stage.csv", "y_true,y_pred\n0,1\n2,5\n");
    let stage_fraction = csv("stage_fraction.csv", "y_true,y_pred\n0,1.5\n");
    let binary = |file: &str| {
        vec!["stats", "binary", "--input", file]
            .into_iter()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let cases: Vec<(Vec<String>, Vec<&str>)> = vec![
        (binary(&empty), vec!["empty.csv", "empty"]),
        (binary(&header_only), vec!["header_only.csv", "empty"]),
        (
            binary("/nonexistent/scores.csv"),
            vec!["/nonexistent/scores.csv", "cannot read"],
        ),
        (
            binary(&missing),
            vec!["missing.csv", "no column named 'y_true'", "truth, y_score"],
        ),
        (
            binary(&non_numeric),
            vec!["non_numeric.csv", "line 3", "'y_score'", "not a number", "high"],
        ),
        (
            binary(&not_binary),
            vec!["not_binary.csv", "line 3", "'y_true'", "expected 0 or 1"],
        ),
        (
            binary(&nan_score),
            vec!["nan_score.csv", "line 3", "'y_score'", "not a finite number"],
        ),
        (
            binary(&above_one),
            vec!["above_one.csv", "line 4", "'y_score'", "[0, 1]"],
        ),
        (binary(&ragged), vec!["ragged.csv", "line 3"]),
        (
            ["stats", "kappa", "--input", &stage, "--k", "3"]
                .map(str::to_owned)
                .to_vec(),
            vec!["stage.csv", "line 3", "'y_pred'", "0..2", "5"],
        ),
        (
            ["stats", "kappa", "--input", &stage_fraction, "--k", "3"]
                .map(str::to_owned)
                .to_vec(),
            vec!["stage_fraction.csv", "line 2", "'y_pred'", "integer code"],
        ),
    ];
    for (args, needles) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_input_error(&args, &needles);
    }
}
