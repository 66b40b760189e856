//! `fedlnm-node stats logistic` against statsmodels `Logit` (node/tests/reference/logistic_reference.py)
//! on generated cohorts: an ordinary fit, complete and quasi-complete separation, a federated pooled fit
//! with a site that has no upper-pole tumour, and input errors that must name file, line and column.
#![allow(clippy::unwrap_used)] // Test helpers: a panic is a failed test.

mod common;

use common::{
    assert_close, assert_close_relative, assert_input_error, fedlnm_node, fedlnm_node_json, python_reference,
};
use rand::{Rng as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution as _, LogNormal, Normal};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

/// One generated patient.
#[derive(Debug, Clone)]
struct Patient {
    hospital: &'static str,
    age: String,
    male: u8,
    max_diameter_mm: f64,
    location: &'static str,
    lnm: u8,
}

/// How a hospital's cohort looks: case mix and baseline risk differ between hospitals.
struct Hospital {
    name: &'static str,
    n: usize,
    baseline_log_odds: f64,
    location_weights: [f64; 3],
}

const LOCATIONS: [&str; 3] = ["lower", "middle", "upper"];

fn cohort(seed: u64, hospitals: &[Hospital]) -> Vec<Patient> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let age = Normal::new(47.0, 13.0).unwrap();
    let diameter = LogNormal::new(2.4, 0.5).unwrap();
    let mut patients = Vec::new();
    for hospital in hospitals {
        for _ in 0..hospital.n {
            let age_years: f64 = age.sample(&mut rng);
            let male = u8::from(rng.random_bool(0.28));
            let max_diameter_mm: f64 = diameter.sample(&mut rng);
            let total: f64 = hospital.location_weights.iter().sum();
            let mut draw = rng.random::<f64>() * total;
            let mut location = LOCATIONS[0];
            for (level, weight) in LOCATIONS.iter().zip(hospital.location_weights) {
                location = level;
                if draw < weight {
                    break;
                }
                draw -= weight;
            }
            let eta = hospital.baseline_log_odds - 0.03 * (age_years - 47.0)
                + 0.55 * f64::from(male)
                + 0.07 * (max_diameter_mm - 11.0)
                + match location {
                    "upper" => 0.9,
                    "middle" => 0.3,
                    _ => 0.0,
                };
            let lnm = u8::from(rng.random_bool(1.0 / (1.0 + (-eta).exp())));
            patients.push(Patient {
                hospital: hospital.name,
                age: format!("{age_years:.1}"),
                male,
                max_diameter_mm: (max_diameter_mm * 10.0).round() / 10.0,
                location,
                lnm,
            });
        }
    }
    patients
}

fn one_hospital(n: usize) -> Vec<Hospital> {
    vec![Hospital {
        name: "A",
        n,
        baseline_log_odds: -0.6,
        location_weights: [0.4, 0.35, 0.25],
    }]
}

fn write_csv(dir: &Path, name: &str, patients: &[Patient]) -> PathBuf {
    let mut text = String::from("hospital,age,male,max_diameter_mm,location,lnm\n");
    for p in patients {
        text.push_str(&format!(
            "{},{},{},{},{},{}\n",
            p.hospital, p.age, p.male, p.max_diameter_mm, p.location, p.lnm
        ));
    }
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn write_spec(dir: &Path, spec: &Value) -> PathBuf {
    let path = dir.join("spec.json");
    std::fs::write(&path, spec.to_string()).unwrap();
    path
}

fn statsmodels(dir: &Path, csv: &Path, spec: &Value) -> Value {
    let spec_path = write_spec(dir, spec);
    python_reference("logistic_reference.py", &[csv, &spec_path])
}

/// Every estimate of ours against statsmodels: coefficients 1e-5 absolute, SEs 1e-6 relative, z, p,
/// odds ratios and their CIs consistently, log-likelihood 1e-6.
fn assert_matches_statsmodels(ours: &Value, reference: &Value) {
    assert_eq!(reference["error"], Value::Null, "statsmodels failed: {reference}");
    assert_eq!(
        reference["converged"],
        json!(true),
        "statsmodels did not converge: {reference}"
    );
    assert_eq!(
        reference["lp_separated"],
        json!(false),
        "the linear program finds separation: {reference}"
    );
    assert_eq!(ours["status"], "ok", "{ours}");
    assert_eq!(ours["separation"], Value::Null);
    let names: Vec<&str> = reference["names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert_eq!(ours["term_order"], json!(names), "design columns differ");
    assert_eq!(ours["terms"].as_object().unwrap().len(), names.len());
    for name in &names {
        let term = &ours["terms"][name];
        let what = |field: &str| format!("{name}.{field}");
        assert_close(&what("coef"), &term["coef"], &reference["params"][name], 1e-5);
        assert_close_relative(&what("se"), &term["se"], &reference["bse"][name], 1e-6);
        let z = reference["z"][name].as_f64().unwrap();
        assert_close(
            &what("z"),
            &term["z"],
            &reference["z"][name],
            1e-5 * z.abs().max(1.0),
        );
        assert_close(&what("p"), &term["p"], &reference["pvalues"][name], 1e-6);
        if *name == "const" {
            for absent in ["or", "or_ci_lower", "or_ci_upper"] {
                assert!(
                    term.get(absent).is_none(),
                    "const must not report {absent}: {term}"
                );
            }
        } else {
            assert_close_relative(&what("or"), &term["or"], &reference["odds_ratio"][name], 1e-5);
            assert_close_relative(
                &what("or_ci_lower"),
                &term["or_ci_lower"],
                &reference["or_ci"][name][0],
                1e-5,
            );
            assert_close_relative(
                &what("or_ci_upper"),
                &term["or_ci_upper"],
                &reference["or_ci"][name][1],
                1e-5,
            );
        }
    }
    assert_close("loglik", &ours["loglik"], &reference["llf"], 1e-6);
}

/// The case really is separated: statsmodels either failed, did not converge, warned, or returned an
/// absurd coefficient, and we report `separation` of `kind` with no estimate at all.
fn assert_separation_where_statsmodels_is_fooled(ours: &Value, reference: &Value, kind: &str) {
    let fooled = !reference["error"].is_null()
        || reference["converged"] != json!(true)
        || reference["max_abs_coef"].as_f64().is_none_or(|c| c > 10.0)
        || reference["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().contains("eparation"));
    assert!(
        fooled,
        "statsmodels fitted this case normally, so it is not a separation case: {reference}"
    );
    assert_eq!(ours["status"], "separation", "{ours}");
    assert_eq!(ours["separation"]["kind"], kind, "{ours}");
    assert!(ours["separation"]["n_boundary"].as_u64().unwrap() > 0);
    assert_eq!(ours["loglik"], Value::Null);
    for (name, term) in ours["terms"].as_object().unwrap() {
        for (field, value) in term.as_object().unwrap() {
            assert!(
                value.is_null(),
                "{name}.{field} must be null under separation: {value}"
            );
        }
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn ordinary_multivariable_fit_matches_statsmodels() {
    let dir = tempfile::tempdir().unwrap();
    let patients = cohort(20_240_501, &one_hospital(1500));
    let csv = write_csv(dir.path(), "cohort.csv", &patients);
    let terms = "age,male,max_diameter_mm,location";
    let ours = fedlnm_node_json(&[
        "stats",
        "logistic",
        "--input",
        path_str(&csv),
        "--outcome",
        "lnm",
        "--terms",
        terms,
        "--reference",
        "location=lower",
    ]);
    let spec = json!({"outcome": "lnm", "terms": terms.split(',').collect::<Vec<_>>(),
                      "references": {"location": "lower"}});
    assert_matches_statsmodels(&ours, &statsmodels(dir.path(), &csv, &spec));
    assert_eq!(ours["references"], json!({"location": "lower"}));
    assert_eq!(ours["n"], json!(patients.len()));
    let positives = patients.iter().filter(|p| p.lnm == 1).count();
    assert_close(
        "outcome_rate",
        &ours["outcome_rate"],
        &json!(positives as f64 / patients.len() as f64),
        1e-15,
    );
    assert_eq!(ours["sites"], Value::Null);

    // The default reference is the first level in sorted order: `lower` here too, so the same fit.
    let default_reference = fedlnm_node_json(&[
        "stats",
        "logistic",
        "--input",
        path_str(&csv),
        "--outcome",
        "lnm",
        "--terms",
        terms,
    ]);
    assert_eq!(default_reference["terms"], ours["terms"]);

    // Another reference level re-parameterises the model: compare with statsmodels again.
    let upper_reference = fedlnm_node_json(&[
        "stats",
        "logistic",
        "--input",
        path_str(&csv),
        "--outcome",
        "lnm",
        "--terms",
        terms,
        "--reference",
        "location=upper",
    ]);
    let spec = json!({"outcome": "lnm", "terms": terms.split(',').collect::<Vec<_>>(),
                      "references": {"location": "upper"}});
    assert_matches_statsmodels(&upper_reference, &statsmodels(dir.path(), &csv, &spec));
}

#[test]
fn complete_separation_is_reported_where_statsmodels_is_fooled() {
    let dir = tempfile::tempdir().unwrap();
    let mut patients = cohort(7, &one_hospital(400));
    for p in &mut patients {
        p.lnm = u8::from(p.max_diameter_mm > 12.0);
    }
    let csv = write_csv(dir.path(), "complete.csv", &patients);
    let ours = fedlnm_node_json(&[
        "stats",
        "logistic",
        "--input",
        path_str(&csv),
        "--outcome",
        "lnm",
        "--terms",
        "age,max_diameter_mm",
    ]);
    let reference = statsmodels(
        dir.path(),
        &csv,
        &json!({"outcome": "lnm", "terms": ["age", "max_diameter_mm"]}),
    );
    assert_separation_where_statsmodels_is_fooled(&ours, &reference, "complete");
    let involved = ours["separation"]["terms"].as_array().unwrap();
    assert!(involved.contains(&json!("max_diameter_mm")), "{ours}");

    // Federated over three sites: the same diagnosis from the sums alone.
    for (i, p) in patients.iter_mut().enumerate() {
        p.hospital = ["A", "B", "C"][i % 3];
    }
    let csv = write_csv(dir.path(), "complete_sites.csv", &patients);
    let federated = fedlnm_node_json(&[
        "stats",
        "logistic",
        "--input",
        path_str(&csv),
        "--outcome",
        "lnm",
        "--terms",
        "age,max_diameter_mm",
        "--site",
        "hospital",
    ]);
    assert_eq!(federated["status"], ours["status"]);
    assert_eq!(federated["separation"]["kind"], ours["separation"]["kind"]);
}

#[test]
fn quasi_complete_separation_is_reported_where_statsmodels_is_fooled() {
    let dir = tempfile::tempdir().unwrap();
    let mut patients = cohort(11, &one_hospital(600));
    for p in patients.iter_mut().filter(|p| p.location == "upper") {
        p.lnm = 1;
    }
    let csv = write_csv(dir.path(), "quasi.csv", &patients);
    let ours = fedlnm_node_json(&[
        "stats",
        "logistic",
        "--input",
        path_str(&csv),
        "--outcome",
        "lnm",
        "--terms",
        "age,male,location",
        "--reference",
        "location=lower",
    ]);
    let spec =
        json!({"outcome": "lnm", "terms": ["age", "male", "location"], "references": {"location": "lower"}});
    let reference = statsmodels(dir.path(), &csv, &spec);
    assert_separation_where_statsmodels_is_fooled(&ours, &reference, "quasi_complete");
    assert_eq!(ours["separation"]["terms"], json!(["location_upper"]), "{ours}");
    let upper = patients.iter().filter(|p| p.location == "upper").count();
    assert_eq!(
        ours["separation"]["n_boundary"],
        json!(upper),
        "every upper-pole row is perfectly predicted"
    );
}

#[test]
fn federated_pooled_fit_with_a_site_without_upper_tumours_equals_statsmodels_on_all_rows() {
    let dir = tempfile::tempdir().unwrap();
    let hospitals = [
        Hospital {
            name: "Aarhus",
            n: 700,
            baseline_log_odds: -0.4,
            location_weights: [0.4, 0.35, 0.25],
        },
        Hospital {
            name: "Bergen",
            n: 450,
            baseline_log_odds: -1.1,
            location_weights: [0.2, 0.3, 0.5],
        },
        // No upper-pole tumour here: this site's own design is rank-deficient.
        Hospital {
            name: "Cork",
            n: 250,
            baseline_log_odds: 0.2,
            location_weights: [0.6, 0.4, 0.0],
        },
    ];
    let patients = cohort(99, &hospitals);
    assert!(
        !patients
            .iter()
            .any(|p| p.hospital == "Cork" && p.location == "upper")
    );
    let csv = write_csv(dir.path(), "three_sites.csv", &patients);
    let terms = "age,male,max_diameter_mm,location";
    let ours = fedlnm_node_json(&[
        "stats",
        "logistic",
        "--input",
        path_str(&csv),
        "--outcome",
        "lnm",
        "--terms",
        terms,
        "--reference",
        "location=lower",
        "--site",
        "hospital",
    ]);
    let spec = json!({"outcome": "lnm", "terms": terms.split(',').collect::<Vec<_>>(),
                      "references": {"location": "lower"}});
    assert_matches_statsmodels(&ours, &statsmodels(dir.path(), &csv, &spec));
    let sites = ours["sites"].as_object().unwrap();
    assert_eq!(sites.len(), 3);
    for hospital in &hospitals {
        let rows: Vec<&Patient> = patients.iter().filter(|p| p.hospital == hospital.name).collect();
        let positives = rows.iter().filter(|p| p.lnm == 1).count();
        assert_eq!(sites[hospital.name]["n"], json!(rows.len()));
        let rate = json!(positives as f64 / rows.len() as f64);
        assert_close(
            &format!("{} rate", hospital.name),
            &sites[hospital.name]["outcome_rate"],
            &rate,
            1e-15,
        );
    }

    // The same rows without --site: the one-site fit agrees with the federated one to 1e-10.
    let pooled = fedlnm_node_json(&[
        "stats",
        "logistic",
        "--input",
        path_str(&csv),
        "--outcome",
        "lnm",
        "--terms",
        terms,
        "--reference",
        "location=lower",
    ]);
    for (name, term) in pooled["terms"].as_object().unwrap() {
        for field in ["coef", "se"] {
            assert_close(
                &format!("{name}.{field}"),
                &ours["terms"][name][field],
                &term[field],
                1e-10,
            );
        }
    }

    // Disclosure control: with a threshold above Cork's 250 rows, Cork refuses and the command fails.
    assert_input_error(
        &[
            "stats",
            "logistic",
            "--input",
            path_str(&csv),
            "--outcome",
            "lnm",
            "--terms",
            terms,
            "--site",
            "hospital",
            "--min-site-rows",
            "251",
        ],
        &["Cork", "250 rows", "disclosure threshold of 251"],
    );
}

#[test]
fn bad_input_names_file_line_and_column_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let patients = cohort(5, &one_hospital(60));
    let csv = write_csv(dir.path(), "good.csv", &patients);
    let file = path_str(&csv);
    let args = |terms: &'static str| {
        [
            "stats",
            "logistic",
            "--input",
            file,
            "--outcome",
            "lnm",
            "--terms",
            terms,
        ]
    };

    assert_input_error(&args("age,stage"), &[file, "no column named 'stage'"]);
    assert_input_error(
        &[
            "stats",
            "logistic",
            "--input",
            file,
            "--outcome",
            "lnm",
            "--terms",
            "location",
            "--reference",
            "location=isthmus",
        ],
        &[
            file,
            "'location'",
            "reference level 'isthmus' does not occur",
            "lower, middle, upper",
        ],
    );

    let mut bad_age = patients.clone();
    bad_age[7].age = "forty".into();
    let bad_age_csv = write_csv(dir.path(), "bad_age.csv", &bad_age);
    let file_bad_age = path_str(&bad_age_csv);
    assert_input_error(
        &[
            "stats",
            "logistic",
            "--input",
            file_bad_age,
            "--outcome",
            "lnm",
            "--terms",
            "age,male",
        ],
        &[file_bad_age, "line 9", "'age'", "not a number", "forty"],
    );

    let mut one_level = patients.clone();
    for p in &mut one_level {
        p.lnm = 0;
    }
    let one_level_csv = write_csv(dir.path(), "one_level.csv", &one_level);
    let file_one_level = path_str(&one_level_csv);
    assert_input_error(
        &[
            "stats",
            "logistic",
            "--input",
            file_one_level,
            "--outcome",
            "lnm",
            "--terms",
            "age",
        ],
        &[file_one_level, "'lnm'", "every row has outcome 0"],
    );

    let mut two = patients.clone();
    two[3].lnm = 2;
    let two_csv = write_csv(dir.path(), "outcome_two.csv", &two);
    let file_two = path_str(&two_csv);
    assert_input_error(
        &[
            "stats",
            "logistic",
            "--input",
            file_two,
            "--outcome",
            "lnm",
            "--terms",
            "age",
        ],
        &[file_two, "line 5", "'lnm'", "expected 0 or 1"],
    );

    let empty = dir.path().join("empty.csv");
    std::fs::write(&empty, "").unwrap();
    assert_input_error(
        &[
            "stats",
            "logistic",
            "--input",
            path_str(&empty),
            "--outcome",
            "lnm",
            "--terms",
            "age",
        ],
        &[path_str(&empty), "empty"],
    );

    // A constant covariate: the pooled design is rank-deficient, named, not a panic.
    let mut constant = patients;
    for p in &mut constant {
        p.male = 1;
    }
    let constant_csv = write_csv(dir.path(), "constant.csv", &constant);
    let file_constant = path_str(&constant_csv);
    assert_input_error(
        &[
            "stats",
            "logistic",
            "--input",
            file_constant,
            "--outcome",
            "lnm",
            "--terms",
            "age,male",
        ],
        &[file_constant, "rank-deficient", "'male' is constant"],
    );

    // A malformed --reference is a usage error (exit 2 too).
    let output = fedlnm_node(&[
        "stats",
        "logistic",
        "--input",
        file,
        "--outcome",
        "lnm",
        "--terms",
        "location",
        "--reference",
        "location",
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("COLUMN=LEVEL"));
}

/// Small cohorts with strong effects, many of them separated: our status agrees with the exact linear
/// programming check on every one, and the fits that are `ok` agree with statsmodels.
#[test]
fn status_agrees_with_the_exact_separation_check_on_small_cohorts() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(314);
    let normal = Normal::new(0.0, 1.0).unwrap();
    let (mut n_ok, mut n_separated) = (0, 0);
    for case in 0..14 {
        let n = rng.random_range(15..60);
        let slopes = [rng.random_range(-6.0..6.0), rng.random_range(-4.0..4.0)];
        let mut text = String::from("y,score,flag\n");
        let mut outcomes = Vec::new();
        for _ in 0..n {
            let score: f64 = normal.sample(&mut rng);
            let flag = u8::from(rng.random_bool(0.4));
            let eta = 0.3 + slopes[0] * score + slopes[1] * f64::from(flag);
            let y = u8::from(rng.random_bool(1.0 / (1.0 + (-eta).exp())));
            outcomes.push(y);
            text.push_str(&format!("{y},{score},{flag}\n"));
        }
        if outcomes.iter().all(|&y| y == outcomes[0]) {
            continue;
        }
        let csv = dir.path().join(format!("small{case}.csv"));
        std::fs::write(&csv, text).unwrap();
        let ours = fedlnm_node_json(&[
            "stats",
            "logistic",
            "--input",
            path_str(&csv),
            "--outcome",
            "y",
            "--terms",
            "score,flag",
        ]);
        let reference = statsmodels(
            dir.path(),
            &csv,
            &json!({"outcome": "y", "terms": ["score", "flag"]}),
        );
        if reference["lp_separated"] == json!(true) {
            n_separated += 1;
            let kind = if reference["lp_complete"] == json!(true) {
                "complete"
            } else {
                "quasi_complete"
            };
            assert_separation_where_statsmodels_is_fooled(&ours, &reference, kind);
        } else {
            n_ok += 1;
            assert_matches_statsmodels(&ours, &reference);
        }
    }
    // The seed gives both kinds of case; if not, this test would prove nothing.
    assert!(
        n_ok >= 3 && n_separated >= 3,
        "ok {n_ok}, separated {n_separated}"
    );
}
