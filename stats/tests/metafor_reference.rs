//! The random-effects meta-analysis of per-site AUCs (`fedlnm_stats::meta`) against R's metafor on
//! generated per-site inputs, to 1e-6 (statistics.md): REML τ² (metafor iterated to 1e-10), the
//! Knapp–Hartung CI, the prediction interval with t(k − 2), Q, I², DerSimonian–Laird τ²; with
//! heterogeneous and homogeneous sites (τ² truncated at 0), from 2 to 30 sites. Needs `Rscript` with
//! metafor (Debian `r-base-core`, `r-cran-metafor`; `.ci/run` installs them).
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is a failed test.

use fedlnm_stats::meta::{pooled_auc, t_quantile_975};
use std::fmt::Write as _;
use std::process::Command;

/// Deterministic pseudo-random numbers in [0, 1).
struct Xorshift(u64);

impl Xorshift {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One site: its name, AUC and DeLong variance.
type Site = (String, f64, f64);

/// Each case's number and sites.
fn cases() -> Vec<(usize, Vec<Site>)> {
    let mut rng = Xorshift(0x9e37_79b9_7f4a_7c15);
    let mut cases = Vec::new();
    for (case, (k, spread)) in [
        (2, 0.05),
        (3, 0.0),
        (3, 0.08),
        (5, 0.03),
        (8, 0.0),
        (12, 0.06),
        (30, 0.02),
    ]
    .into_iter()
    .enumerate()
    {
        let sites = (0..k)
            .map(|i| {
                // Site AUCs around 0.8 (spread: between-site heterogeneity), variances of sites of
                // 80 to 800 patients.
                let auc = (0.8 + spread * (rng.next() - 0.5) * 4.0).clamp(0.55, 0.97);
                let n = 80.0 + 720.0 * rng.next();
                let variance = auc * (1.0 - auc) / (0.25 * n) * (0.8 + 0.4 * rng.next());
                (format!("S{}", i + 1), auc, variance)
            })
            .collect();
        cases.push((case, sites));
    }
    cases
}

#[test]
fn random_effects_of_site_aucs_equal_metafor() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("sites.csv");
    let mut csv = String::from("case,site,auc,var\n");
    for (case, sites) in cases() {
        for (site, auc, var) in &sites {
            writeln!(csv, "{case},{site},{auc:.17e},{var:.17e}").unwrap();
        }
    }
    std::fs::write(&input, csv).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/reference/metafor_reference.R");
    let output = Command::new("Rscript")
        .arg(script)
        .arg(&input)
        .output()
        .expect("Rscript not found: install r-base-core and r-cran-metafor (.ci/run does)");
    assert!(
        output.status.success(),
        "the metafor reference failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let cases = cases();
    let mut checked = 0;
    for line in lines {
        let fields: Vec<&str> = line.split(',').collect();
        let case: usize = fields[0].parse().unwrap();
        let reference = |name: &str| -> Option<f64> {
            let index = header.iter().position(|h| *h == name).unwrap();
            fields[index].parse::<f64>().ok().filter(|v| v.is_finite())
        };
        let sites: Vec<(String, Option<f64>, Option<f64>)> = cases[case]
            .1
            .iter()
            .map(|(site, auc, var)| (site.clone(), Some(*auc), Some(*var)))
            .collect();
        let ours = pooled_auc(&sites).unwrap().logit;
        let k = sites.len();
        let values = [
            ("estimate", Some(ours.estimate)),
            ("se", Some(ours.se)),
            ("se_kh", Some(ours.se_knapp_hartung)),
            ("ci_lower", Some(ours.ci_lower)),
            ("ci_upper", Some(ours.ci_upper)),
            ("prediction_lower", ours.prediction_lower),
            ("prediction_upper", ours.prediction_upper),
            ("tau2", Some(ours.tau2)),
            ("tau2_dl", Some(ours.tau2_dersimonian_laird)),
            ("q", Some(ours.q)),
            ("i2", Some(ours.i2)),
        ];
        for (name, value) in values {
            match (value, reference(name)) {
                (Some(ours), Some(theirs)) => assert!(
                    (ours - theirs).abs() <= 1e-6 * (1.0 + theirs.abs()),
                    "case {case} (k = {k}), {name}: ours {ours}, metafor {theirs}"
                ),
                (None, None) => {}
                (ours, theirs) => panic!("case {case} (k = {k}), {name}: ours {ours:?}, metafor {theirs:?}"),
            }
        }
        checked += 1;
    }
    assert_eq!(checked, cases.len(), "metafor answered every case");
}

/// Student's t quantiles against R's `qt(0.975, df)`, printed to 17 digits by R in the same run.
#[test]
fn t_quantiles_equal_r() {
    let dfs = [1.0, 2.0, 3.0, 4.0, 7.0, 10.0, 29.0, 100.0];
    let expression = format!(
        "cat(sprintf('%.17g', qt(0.975, c({}))), sep = '\\n')",
        dfs.map(|d| d.to_string()).join(",")
    );
    let output = Command::new("Rscript")
        .args(["-e", &expression])
        .output()
        .expect("Rscript not found: install r-base-core (.ci/run does)");
    assert!(output.status.success());
    let reference: Vec<f64> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(reference.len(), dfs.len());
    for (df, theirs) in dfs.iter().zip(reference) {
        let ours = t_quantile_975(*df);
        assert!(
            (ours - theirs).abs() <= 1e-10 * theirs,
            "df {df}: {ours} vs {theirs}"
        );
    }
}
