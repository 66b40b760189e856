//! The researcher's main job end to end: `fedlnm-sim` (throw-away CA, synthetic sites with
//! different scanners and case mix, the aggregator and four real nodes over mutual-TLS gRPC on
//! loopback, tiny model) with secure aggregation (the default), and the same study with plain FedAvg:
//! the global model changes every round, every site reports metrics every round, the round files and
//! the report are on disk, and secure aggregation reaches the plain FedAvg validation AUC.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is a failed test.

use fedlnm_aggregator::report::html::SECTIONS;
use fedlnm_aggregator::store::RoundStore;
use fedlnm_e2e::browser;
use fedlnm_shared::config::{ComputeDevice, SiteRole};
use fedlnm_shared::federation::{
    AggregationKind, PrivacySpent, RoundRecord, ScoreHistogram, ScoringStatistics, SiteValidation,
    StageConfusion,
};
use fedlnm_shared::stats::logistic::FitStatus;
use fedlnm_sim::{Design, SimulateArgs, SimulationOutcome, simulate};
use std::path::Path;

fn args(out: &Path, plain: bool) -> SimulateArgs {
    SimulateArgs {
        out: out.to_path_buf(),
        rounds: 2,
        train_sites: 3,
        validate_sites: 1,
        patients: 64,
        image_size: 32,
        base_width: 8,
        local_epochs: 1,
        learning_rate: 2e-3,
        plain,
        fedbn: false,
        proximal_mu: 0.0,
        noise_multiplier: 0.0,
        clip_norm: 1.0,
        seed: 11,
        device: ComputeDevice::Cpu,
        design: Design::Single,
        folds: 5,
        mu: vec![0.1],
        sites: fedlnm_sim::SiteSet::Default,
        methods: fedlnm_sim::FederatedMethod::ALL.to_vec(),
        model_config: None,
        adabn: false,
        site_statistics: false,
        lr_schedule: fedlnm_shared::config::LearningRateSchedule::EachRound,
        server_lr: 1.0,
        resume: false,
    }
}

fn records(outcome: &SimulationOutcome) -> Vec<RoundRecord> {
    let store = RoundStore::open(&outcome.state_dir).unwrap();
    let rounds = store.committed_rounds().unwrap();
    assert_eq!(rounds, vec![0, 1, 2]);
    rounds.iter().map(|&r| store.load(r).unwrap().record).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_study_runs_secure_rounds_and_matches_plain_fedavg() {
    let dir = tempfile::tempdir().unwrap();
    let secure = simulate(&args(&dir.path().join("secure"), false)).await.unwrap();
    let records_secure = records(&secure);
    assert_eq!(secure.rounds, 2);
    let mut digests: Vec<&str> = records_secure.iter().map(|r| r.model_digest.as_str()).collect();
    digests.dedup();
    assert_eq!(digests.len(), 3, "the global model must change every round");
    for record in &records_secure[1..] {
        assert_eq!(record.aggregation, AggregationKind::Secure);
        assert_eq!(record.contributors, ["S1", "S2", "S3"]);
        assert!(record.dropped.is_empty());
        let sites: Vec<(&str, SiteRole)> = record.sites.iter().map(|s| (s.site.as_str(), s.role)).collect();
        assert_eq!(
            sites,
            [
                ("S1", SiteRole::Train),
                ("S2", SiteRole::Train),
                ("S3", SiteRole::Train),
                ("S4", SiteRole::Validate)
            ]
        );
        for site in &record.sites {
            assert!(site.auc.is_some_and(|auc| (0.0..=1.0).contains(&auc)), "{site:?}");
            // Each node's flow and characteristics: every generated patient read and included
            // (the generator writes no bad rows), split into training and validation.
            let cohort = site.cohort.as_ref().expect("the node reports its cohort");
            assert_eq!((cohort.read, cohort.included, cohort.labelled), (64, 64, 64));
            assert!(cohort.excluded.is_empty());
            assert_eq!(cohort.validation, site.n_patients);
            assert_eq!(cohort.training + cohort.validation, 64);
            assert_eq!(cohort.training == 0, site.role == SiteRole::Validate);
            assert_eq!(cohort.tirads.iter().sum::<u64>(), 64);
        }
        // The pooled training sites: the secure sum of their histograms, which is exactly the plain
        // sum of the histograms each node kept for itself (same integers, hence the same AUC).
        let pool = record
            .pooled_train_sites
            .as_ref()
            .expect("the training sites are pooled");
        assert_eq!(pool.sites, ["S1", "S2", "S3"]);
        let mut plain_sum = ScoreHistogram::empty();
        let mut plain_confusion = StageConfusion::empty();
        for (site, work) in secure.node_work_dirs.iter().filter(|(site, _)| site != "S4") {
            let file = work
                .join("validation")
                .join(format!("round-{:04}.json", record.round));
            let own: SiteValidation = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
            let reported = record.sites.iter().find(|s| &s.site == site).unwrap();
            assert_eq!(
                &own.metrics, reported,
                "{site}: the report is the node's own metrics"
            );
            plain_sum.merge(&own.histogram).unwrap();
            plain_confusion.add(&own.stage_confusion);
        }
        assert_eq!(pool.histogram, plain_sum);
        // The stage confusion matrices travel in the same secure sum.
        assert_eq!(pool.stage_confusion.as_ref(), Some(&plain_confusion));
        let plain_auc = plain_sum.auc().unwrap().unwrap();
        assert_eq!(pool.auc, Some(plain_auc.auc));
        assert_eq!(pool.auc_ci_lower, plain_auc.ci_lower);
        assert_eq!(
            pool.n_patients,
            record.sites[..3].iter().map(|s| s.n_patients).sum::<u64>()
        );
        // One validate-only site is no pool: a sum over one site would be its histogram.
        assert!(record.pooled_validation_sites.is_none());
        assert!(record.total_samples > 0);

        // What the aggregator stored holds no per-site score distribution.
        let file = RoundStore::open(&secure.state_dir)
            .unwrap()
            .round_dir(record.round)
            .join("round.json");
        let stored: serde_json::Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
        for site in stored["sites"].as_array().unwrap() {
            let keys: Vec<&String> = site.as_object().unwrap().keys().collect();
            assert!(
                keys.iter().all(|key| !key.contains("histogram")),
                "a site's record holds {keys:?}"
            );
        }
    }
    for file in [
        "rounds.csv",
        "rounds.json",
        "final_sites.csv",
        "summary.md",
        "roc_final.png",
    ] {
        assert!(
            secure.results_dir.join(file).exists(),
            "{file} missing from the report"
        );
    }
    report_renders_in_a_browser(&secure);
    site_report_shows_the_site_alone(&secure);

    // The same study with plain FedAvg: secure aggregation only adds 2^-32 quantization, so the
    // validation AUCs agree within noise.
    let plain = simulate(&args(&dir.path().join("plain"), true)).await.unwrap();
    let records_plain = records(&plain);
    assert_eq!(records_plain[2].aggregation, AggregationKind::Plain);
    for (s, p) in records_secure[2].sites.iter().zip(&records_plain[2].sites) {
        let (a, b) = (s.auc.unwrap(), p.auc.unwrap());
        assert!((a - b).abs() <= 0.05, "{}: secure AUC {a} vs plain {b}", s.site);
    }

    assert!(records_secure.iter().all(|record| record.privacy.is_none()));

    // Reproducible: the same seed gives the same final model, secure aggregation included (each
    // site's stochastic rounding is keyed by its own rounding secret, which the seed sets here).
    let again = simulate(&args(&dir.path().join("secure-again"), false))
        .await
        .unwrap();
    assert_eq!(again.final_digest, secure.final_digest);
    assert_eq!(records(&again)[2].sites, records_secure[2].sites);

    // With differential privacy: each site clips to C = 1 and adds its share of the noise; sites
    // weigh equally (the total "samples" are the contributing sites) and every record states the ε
    // spent, as the accountant composes it over the rounds so far.
    let private = simulate(&SimulateArgs {
        noise_multiplier: 0.8,
        ..args(&dir.path().join("private"), false)
    })
    .await
    .unwrap();
    let records_private = records(&private);
    let mut last_epsilon = 0.0;
    for record in &records_private[1..] {
        assert_eq!(
            record.total_samples, 3,
            "equal weights under differential privacy"
        );
        let spent = record.privacy.as_ref().expect("the ε of a noisy round");
        let expected = PrivacySpent::after(0.8, 1.0, 1e-5, record.round).unwrap();
        assert_eq!(spent, &expected);
        assert!(spent.epsilon_study > last_epsilon && spent.epsilon_round <= spent.epsilon_study);
        last_epsilon = spent.epsilon_study;
        assert!(record.sites.iter().all(|site| site.auc.is_some()));
    }
    let summary = std::fs::read_to_string(private.results_dir.join("summary.md")).unwrap();
    assert!(
        summary.contains("ε ="),
        "the report states the privacy spent:\n{summary}"
    );

    // A second simulation never overwrites a results folder.
    let error = simulate(&args(&dir.path().join("plain"), true))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("is not empty"), "{error}");
}

/// The study's `report.html` as headless Chromium builds and paints it: every section, one forest row
/// per site, the ROC, calibration and decision figures drawn, the registered analysis's odds ratios
/// (or its sites' refusals), and a screenshot that is a page of text and figures, not a blank one.
fn report_renders_in_a_browser(study: &SimulationOutcome) {
    let report = study.results_dir.join("report.html");
    let dom = browser::dump_dom(&browser::file_url(&report));
    for (anchor, _) in SECTIONS {
        assert!(
            dom.contains(&format!("<section id=\"{anchor}\">")),
            "section {anchor}"
        );
    }
    for site in ["S1", "S2", "S3", "S4"] {
        assert!(
            dom.contains(&format!("<g class=\"row\" data-label=\"{site} (n = ")),
            "forest row of {site}"
        );
        assert!(
            dom.contains(&format!("<tr data-site=\"{site}\"><td>{site} (")),
            "characteristics of {site}"
        );
    }
    assert!(dom.contains("<table class=\"flow\">"));
    for figure in [
        "roc",
        "calibration",
        "decision",
        "calibration-sites",
        "decision-sites",
        "auc-by-round",
    ] {
        let start = dom
            .find(&format!("<figure class=\"chart {figure}\">"))
            .unwrap_or_else(|| panic!("figure {figure}"));
        let end = start + dom[start..].find("</figure>").unwrap();
        assert!(
            dom[start..end].contains("<polyline points=\""),
            "figure {figure} has no curve"
        );
    }
    // The registered analysis: its stored result is what the page shows.
    let analyses = RoundStore::open(&study.state_dir).unwrap().analyses().unwrap();
    assert_eq!(analyses.len(), 1, "the registered analysis ran");
    let result = &analyses[0];
    assert!(dom.contains(&result.analysis.name));
    match &result.adjusted.fit {
        Some(fit) if fit.status == FitStatus::Ok => {
            for term in fit.terms.iter().filter(|t| t.name != "const") {
                let (or, lower, upper) = (
                    term.or.unwrap(),
                    term.or_ci_lower.unwrap(),
                    term.or_ci_upper.unwrap(),
                );
                assert!(
                    dom.contains(&format!("{or:.2} ({lower:.2}–{upper:.2})")),
                    "odds ratio of {}",
                    term.name
                );
            }
        }
        _ => {
            for excluded in &result.excluded {
                assert!(dom.contains(&excluded.reason), "{excluded:?}");
            }
        }
    }

    let shot = browser::screenshot(
        &browser::file_url(&report),
        &study.results_dir.join("report.png"),
        (1280, 2400),
    );
    assert_eq!(shot.dimensions(), (1280, 2400));
    let inked = shot.pixels().filter(|p| p.0.iter().any(|&c| c < 200)).count();
    let share = inked as f64 / f64::from(1280 * 2400);
    assert!(
        share > 0.02,
        "the screenshot is nearly blank: {share:.4} of it inked"
    );
}

/// S1's own report (written by its node's `site-report` code at the end of the simulation): its own
/// AUC, its own confusion matrices and cohort, the Grad-CAM overlays as embedded pictures that the
/// browser decodes, and no other site's name.
fn site_report_shows_the_site_alone(study: &SimulationOutcome) {
    let page = study
        .results_dir
        .join(fedlnm_sim::SITE_REPORTS_DIR)
        .join("S1")
        .join(fedlnm_node::commands::site_report::SITE_REPORT_FILE);
    let dom = browser::dump_dom(&browser::file_url(&page));
    let (_, work) = study
        .node_work_dirs
        .iter()
        .find(|(site, _)| site == "S1")
        .unwrap();
    let records = fedlnm_node::commands::site_report::own_records(work).unwrap();
    let (round, last) = records.last().unwrap();
    assert_eq!(*round, study.rounds);
    let auc = format!(
        "{:.3} ({:.3}–{:.3})",
        last.metrics.auc.unwrap(),
        last.metrics.auc_ci_lower.unwrap(),
        last.metrics.auc_ci_upper.unwrap()
    );
    assert!(dom.contains(&auc), "S1's AUC {auc}");
    // What the figures measured: S1 scored the model with its own running statistics (this study's
    // default), as its record states.
    assert_eq!(last.metrics.normalisation, Some(ScoringStatistics::Model));
    let statement = format!(
        "Batch-normalisation statistics at scoring (round {round}): S1 with the model's own running statistics"
    );
    assert!(dom.contains(&statement), "{statement}");
    assert_eq!(browser::count(&dom, "<table class=\"confusion\""), 3);
    assert!(dom.contains("<table class=\"flow\">"));
    assert_eq!(browser::count(&dom, "src=\"data:image/png;base64,"), 2);
    // The page without its embedded pictures (base64 may spell anything) names no other site.
    let mut text = String::new();
    let mut rest = dom.as_str();
    while let Some(start) = rest.find("base64,") {
        text.push_str(&rest[..start]);
        rest = &rest[start..];
        rest = &rest[rest.find('"').unwrap_or(rest.len())..];
    }
    text.push_str(rest);
    for other in ["S2", "S3", "S4", "pooled-"] {
        assert!(!text.contains(other), "S1's own report mentions {other}");
    }
    // The overlays are pictures the browser can paint: a screenshot is not blank.
    let shot = browser::screenshot(
        &browser::file_url(&page),
        &page.with_extension("png"),
        (1000, 3000),
    );
    let inked = shot.pixels().filter(|p| p.0.iter().any(|&c| c < 200)).count();
    assert!(
        inked > 30_000,
        "the site report's screenshot is nearly blank ({inked} inked pixels)"
    );
}
