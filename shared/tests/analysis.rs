//! The federated analysis of clinical factors, run in process: the sites answer each Newton step with
//! sums of their own rows only, and the coordinator's odds ratios equal the fit of all rows pooled;
//! a site under the disclosure threshold refuses and is named; a request for anything but the
//! configured fits is refused; separation is reported as such; bad configurations name the key.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is a failed test.

use fedlnm_shared::analysis::{
    AnalysisAnswer, AnalysisConfig, AnalysisResult, AnalysisRun, FitRequest, Progress, SitePolicy,
    pooled_rows, site_answer,
};
use fedlnm_shared::data::PatientRecord;
use fedlnm_shared::data::report::Sex;
use fedlnm_shared::stats::logistic::{self, FitOptions, FitStatus, LogisticFit};
use fedlnm_shared::synth::profile::SiteProfile;
use fedlnm_shared::synth::{OutputFormat, SynthConfig, generate_cohort};
use std::collections::BTreeMap;

fn records(site: &str, profile: &str, n: usize, seed: u64) -> Vec<PatientRecord> {
    let config = SynthConfig {
        site: site.into(),
        n_patients: n,
        seed,
        profile: SiteProfile::named(profile).unwrap(),
        format: OutputFormat::Png,
        image_size: 32,
    };
    generate_cohort(&config)
        .patients
        .into_iter()
        .map(|p| p.record)
        .collect()
}

fn clinical_factors() -> AnalysisConfig {
    toml::from_str(
        r#"
        name = "clinical-factors"
        terms = ["male", "age_under_45", "max_diameter_mm", "multifocal", "pole", "capsule_contact"]
        reference = { pole = "lower", capsule_contact = "none" }
        "#,
    )
    .unwrap()
}

/// Runs `config` over `sites` as the aggregator would: every participant answers every step; a run
/// that a site breaks starts again without it.
fn federate(config: &AnalysisConfig, sites: &[(&str, Vec<PatientRecord>)]) -> AnalysisResult {
    let names: Vec<String> = sites.iter().map(|(s, _)| (*s).to_owned()).collect();
    let mut run = AnalysisRun::new(config.clone(), names, Vec::new()).unwrap();
    let mut request = run.request();
    loop {
        let answers: BTreeMap<String, AnalysisAnswer> = sites
            .iter()
            .filter(|(site, _)| run.participants().iter().any(|p| p == site))
            .map(|(site, rows)| {
                (
                    (*site).to_owned(),
                    site_answer(rows, &request, SitePolicy::default()),
                )
            })
            .collect();
        match run.update(&answers).unwrap() {
            Progress::Continue(next) => request = next,
            Progress::Done(result) => return *result,
        }
    }
}

fn assert_same_fit(federated: &LogisticFit, pooled: &LogisticFit, what: &str) {
    assert_eq!(federated.status, pooled.status, "{what}");
    assert_eq!(
        (federated.n, federated.n_positive),
        (pooled.n, pooled.n_positive),
        "{what}"
    );
    for (f, p) in federated.terms.iter().zip(&pooled.terms) {
        assert_eq!(f.name, p.name, "{what}");
        for (a, b, field) in [(f.coef, p.coef, "coef"), (f.se, p.se, "se"), (f.p, p.p, "p")] {
            let (a, b) = (a.unwrap(), b.unwrap());
            assert!(
                (a - b).abs() <= 1e-8 * b.abs().max(1.0),
                "{what}: {}: {field} {a} vs {b}",
                f.name
            );
        }
    }
}

#[test]
fn federated_odds_ratios_equal_the_pooled_fit_and_name_the_sites() {
    let sites = [
        ("S1", records("S1", "tertiary", 700, 1)),
        ("S2", records("S2", "community", 500, 2)),
        ("S3", records("S3", "rural", 300, 3)),
        ("TINY", records("TINY", "rural", 8, 4)),
    ];
    let config = clinical_factors();
    let result = federate(&config, &sites);

    // The tiny site refused at step 0, saying why; the others are in, with their sizes.
    assert_eq!(result.excluded.len(), 1);
    assert_eq!(result.excluded[0].site, "TINY");
    assert!(
        result.excluded[0]
            .reason
            .contains("8 labelled patients is below the disclosure threshold of 10"),
        "{}",
        result.excluded[0].reason
    );
    let included: Vec<&str> = result.sites.iter().map(|s| s.site.as_str()).collect();
    assert_eq!(included, ["S1", "S2", "S3"]);
    for (rate, (_, rows)) in result.sites.iter().zip(&sites) {
        let events = rows.iter().filter(|r| r.labels.unwrap().lnm).count() as u64;
        assert_eq!((rate.n, rate.events), (rows.len() as u64, events));
        let (lo, hi) = fedlnm_shared::stats::wilson_interval(events, rate.n).unwrap();
        assert_eq!((rate.ci_lower, rate.ci_upper), (lo, hi));
    }
    assert_eq!(result.pooled.as_ref().unwrap().n, 1500);

    // The pooled fit of every row of the included sites, by the same engine on one table.
    let all: Vec<PatientRecord> = sites[..3].iter().flat_map(|(_, r)| r.clone()).collect();
    let fits = config.fits();
    let outcomes = std::iter::once(&result.adjusted).chain(&result.crude);
    assert_eq!(result.crude.len(), config.terms.len());
    for (terms, outcome) in fits.iter().zip(outcomes) {
        assert_eq!(&outcome.terms, terms);
        let (design, y) = pooled_rows(&config, terms, &all).unwrap();
        let pooled = logistic::fit(&design, &y, FitOptions::default()).unwrap();
        let federated = outcome.fit.as_ref().unwrap();
        assert_eq!(federated.status, FitStatus::Ok, "{terms:?}");
        assert_same_fit(federated, &pooled, &terms.join("+"));
    }
    // Treatment coding against the declared references.
    let names: Vec<&str> = result
        .adjusted
        .fit
        .as_ref()
        .unwrap()
        .terms
        .iter()
        .map(|t| t.name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "const",
            "male",
            "age_under_45",
            "max_diameter_mm",
            "multifocal",
            "pole_upper",
            "pole_middle",
            "capsule_contact_under_25",
            "capsule_contact_over_25"
        ]
    );
}

#[test]
fn a_site_refuses_requests_beyond_the_configured_fits_and_steps() {
    let rows = records("S1", "tertiary", 200, 7);
    let config = clinical_factors();
    let run = AnalysisRun::new(config.clone(), vec!["S1".into()], Vec::new()).unwrap();
    let mut request = run.request();
    // Two of the terms together: not the adjusted model, not a crude one.
    request.fits.push(FitRequest {
        terms: vec!["male".into(), "multifocal".into()],
        beta: vec![0.0; 3],
    });
    let AnalysisAnswer::Refused { reason } = site_answer(&rows, &request, SitePolicy::default()) else {
        panic!("an unconfigured fit was answered");
    };
    assert!(
        reason.contains("[male, multifocal] is not one of the analysis's"),
        "{reason}"
    );

    let mut request = run.request();
    request.step = 500;
    let AnalysisAnswer::Refused { reason } = site_answer(&rows, &request, SitePolicy::default()) else {
        panic!("step 500 was answered");
    };
    assert!(reason.contains("step 500 is past"), "{reason}");

    // The site's own threshold applies when it is stricter than the study's.
    let strict = SitePolicy {
        enabled: true,
        min_rows: 500,
    };
    let AnalysisAnswer::Refused { reason } = site_answer(&rows, &run.request(), strict) else {
        panic!("the site's own threshold was ignored");
    };
    assert!(
        reason.contains("below the disclosure threshold of 500"),
        "{reason}"
    );
    let off = SitePolicy {
        enabled: false,
        min_rows: 10,
    };
    assert!(matches!(
        site_answer(&rows, &run.request(), off),
        AnalysisAnswer::Refused { .. }
    ));
}

#[test]
fn a_site_that_refuses_after_step_zero_or_sends_the_wrong_size_is_named() {
    let rows = records("S1", "tertiary", 200, 8);
    let config = clinical_factors();
    let mut run = AnalysisRun::new(config, vec!["S1".into(), "S2".into()], Vec::new()).unwrap();
    let request = run.request();
    let answer = site_answer(&rows, &request, SitePolicy::default());
    let answers: BTreeMap<String, AnalysisAnswer> =
        [("S1".to_owned(), answer.clone()), ("S2".to_owned(), answer)].into();
    let Progress::Continue(request) = run.update(&answers).unwrap() else {
        panic!("finished after one step");
    };
    let mut answers: BTreeMap<String, AnalysisAnswer> = [
        (
            "S1".to_owned(),
            site_answer(&rows, &request, SitePolicy::default()),
        ),
        (
            "S2".to_owned(),
            AnalysisAnswer::Refused {
                reason: "changed its mind".into(),
            },
        ),
    ]
    .into();
    let error = run.update(&answers).unwrap_err();
    assert_eq!(error.site, "S2");
    assert!(
        error
            .reason
            .contains("refused step 1 after taking part: changed its mind"),
        "{error}"
    );
    answers.remove("S2");
    let error = run.update(&answers).unwrap_err();
    assert!(
        error.to_string().contains("site S2: no answer to step 1"),
        "{error}"
    );
    // A site whose size changes between steps is caught (its sums would not be of the same rows).
    let fewer = site_answer(&rows[..150], &request, SitePolicy::default());
    answers.insert("S2".into(), fewer);
    let error = run.update(&answers).unwrap_err();
    assert!(error.reason.contains("150 patients"), "{error}");
}

#[test]
fn separation_is_reported_as_such() {
    // LNM exactly when male: `male` separates the outcome completely.
    let mut rows = records("S1", "tertiary", 300, 9);
    for record in &mut rows {
        let labels = record.labels.as_mut().unwrap();
        labels.lnm = record.clinical.sex == Sex::Male;
    }
    let config: AnalysisConfig = toml::from_str(
        r#"
        name = "separated"
        terms = ["male", "age_years"]
        "#,
    )
    .unwrap();
    let result = federate(&config, &[("S1", rows)]);
    let adjusted = result.adjusted.fit.unwrap();
    assert_eq!(adjusted.status, FitStatus::Separation);
    assert!(adjusted.separation.unwrap().terms.contains(&"male".to_owned()));
    assert!(
        adjusted.terms.iter().all(|t| t.or.is_none()),
        "an OR printed under separation"
    );
    let crude_age = result.crude[1].fit.as_ref().unwrap();
    assert_eq!(crude_age.status, FitStatus::Ok);
}

#[test]
fn bad_configurations_name_the_key() {
    let check = |text: &str| {
        let config: AnalysisConfig = toml::from_str(text).unwrap();
        config.check().unwrap_err()
    };
    let (key, problem) = check(
        r#"name = "a"
terms = ["male", "tumour_colour"]"#,
    );
    assert_eq!(key, "terms");
    assert!(
        problem.contains("unknown field 'tumour_colour' (known: age_years"),
        "{problem}"
    );
    let (key, problem) = check(
        r#"name = "a"
terms = ["age_years"]
reference = { age_years = "40" }"#,
    );
    assert_eq!(key, "reference");
    assert!(problem.contains("'age_years' is numeric"), "{problem}");
    let (_, problem) = check(
        r#"name = "a"
terms = ["pole"]
reference = { pole = "bottom" }"#,
    );
    assert!(
        problem.contains("'bottom' is not a level of 'pole' (upper, middle, lower)"),
        "{problem}"
    );
    let (key, _) = check(
        r#"name = "a"
terms = ["pole"]
min_site_rows = 2"#,
    );
    assert_eq!(key, "min_site_rows");
    let (key, _) = check(
        r#"name = "a/../b"
terms = ["pole"]"#,
    );
    assert_eq!(key, "name");
}

#[test]
fn a_model_the_pooled_rows_cannot_identify_is_reported_with_the_reason() {
    // `sex` (dummy sex_M) and `male` are the same column: the adjusted model is not identifiable,
    // each crude model is.
    let config: AnalysisConfig = toml::from_str(
        r#"
        name = "collinear"
        terms = ["sex", "male"]
        reference = { sex = "F" }
        "#,
    )
    .unwrap();
    let result = federate(&config, &[("S1", records("S1", "tertiary", 200, 10))]);
    assert!(result.adjusted.fit.is_none());
    let error = result.adjusted.error.unwrap();
    assert!(error.contains("rank-deficient"), "{error}");
    assert!(
        result
            .crude
            .iter()
            .all(|c| c.fit.as_ref().unwrap().status == FitStatus::Ok)
    );
}
