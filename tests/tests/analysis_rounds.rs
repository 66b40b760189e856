//! The study's analysis of clinical factors end to end, after the last round: the aggregator drives
//! the federated Newton–Raphson over the real mutual-TLS gRPC service, real nodes
//! (`fedlnm_node::federation::Node`, as `fedlnm-node federate` runs them) answer each step from their
//! own manifests, and the stored odds ratios equal the fit of every site's rows pooled in one table
//! to 1e-8; a site under the disclosure threshold refuses and is named; hostile answers are refused
//! by name and change nothing; a restarted aggregator does not run a stored analysis again.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is a failed test.

use fedlnm_aggregator::store::{ModelBlob, RoundStore};
use fedlnm_e2e::{RunningAggregator, provision_study, site_config, small_model};
use fedlnm_protocol::generated::{AnalysisReport, task};
use fedlnm_shared::analysis::{AnalysisConfig, AnalysisResult, pooled_rows};
use fedlnm_shared::config::{AggregatorConfig, RoundSettings};
use fedlnm_shared::data::{PatientRecord, read_manifest};
use fedlnm_shared::model_config::{Modality, ModelConfig};
use fedlnm_shared::stats::logistic::{self, FitOptions, FitStatus};
use fedlnm_shared::synth::profile::SiteProfile;
use fedlnm_shared::synth::{OutputFormat, SynthConfig, write_site};
use std::path::Path;

mod common;

use common::{STUDY, connect, next_task};

/// The sites' sizes: S4 is under the disclosure threshold (10).
const SITES: [(&str, &str, usize); 4] = [
    ("S1", "tertiary", 260),
    ("S2", "community", 200),
    ("S3", "rural", 140),
    ("S4", "rural", 7),
];

fn categorical_analysis() -> AnalysisConfig {
    toml::from_str(
        r#"
        name = "location-and-contact"
        terms = ["age_years", "male", "pole", "capsule_contact"]
        reference = { pole = "lower", capsule_contact = "none" }
        "#,
    )
    .unwrap()
}

/// A study whose only round is committed (as after its last round), with two analyses configured.
fn finished_rounds(dir: &Path) -> AggregatorConfig {
    let rounds = RoundSettings {
        rounds: 1,
        secure_aggregation: false,
        long_poll_s: 2,
        validation_deadline_s: 60,
        ..RoundSettings::default()
    };
    let mut config = provision_study(dir, STUDY, rounds);
    config.analyses.push(categorical_analysis());
    let store = RoundStore::open(&config.state_dir).unwrap();
    let initial = ModelBlob::new(0, small_model(), ModelConfig::tiny(Modality::Multimodal)).unwrap();
    let mut record = fedlnm_shared::federation::RoundRecord {
        study: STUDY.into(),
        round: 0,
        model_digest: initial.digest.clone(),
        model_config_digest: initial.config_digest.clone(),
        aggregation: fedlnm_shared::federation::AggregationKind::Plain,
        contributors: Vec::new(),
        total_samples: 0,
        dropped: Vec::new(),
        aggregation_seconds: 0.0,
        round_seconds: 0.0,
        committed_at: "2026-12-02T00:00:00Z".into(),
        sites: Vec::new(),
        pooled_train_sites: None,
        pooled_validation_sites: None,
        privacy: None,
    };
    store.commit(&record, &initial).unwrap();
    let model = ModelBlob::new(1, small_model(), ModelConfig::tiny(Modality::Multimodal)).unwrap();
    record.round = 1;
    record.model_digest = model.digest.clone();
    store.commit(&record, &model).unwrap();
    config
}

/// Writes each site's synthetic data into its kit's `data` folder; returns each site's records.
fn write_sites(dir: &Path) -> Vec<(String, Vec<PatientRecord>)> {
    SITES
        .iter()
        .enumerate()
        .map(|(index, (site, profile, n))| {
            let data = fedlnm_e2e::kit(dir, site).join("data");
            let config = SynthConfig {
                site: (*site).into(),
                n_patients: *n,
                seed: 40 + index as u64,
                profile: SiteProfile::named(profile).unwrap(),
                format: OutputFormat::Png,
                image_size: 32,
            };
            write_site(&config, &data).unwrap();
            let records = read_manifest(&data)
                .unwrap()
                .records
                .into_iter()
                .map(|(_, r)| r)
                .collect();
            ((*site).to_owned(), records)
        })
        .collect()
}

fn assert_equals_pooled_fit(result: &AnalysisResult, pooled_records: &[PatientRecord]) {
    let config = &result.analysis;
    let outcomes = std::iter::once(&result.adjusted).chain(&result.crude);
    for (terms, outcome) in config.fits().iter().zip(outcomes) {
        let (design, y) = pooled_rows(config, terms, pooled_records).unwrap();
        let pooled = logistic::fit(&design, &y, FitOptions::default()).unwrap();
        let federated = outcome
            .fit
            .as_ref()
            .unwrap_or_else(|| panic!("{terms:?}: {:?}", outcome.error));
        assert_eq!(federated.status, FitStatus::Ok, "{terms:?}");
        assert_eq!(federated.n, pooled.n);
        for (f, p) in federated.terms.iter().zip(&pooled.terms) {
            assert_eq!(f.name, p.name);
            for (a, b) in [(f.coef, p.coef), (f.se, p.se), (f.or_ci_lower, p.or_ci_lower)] {
                // The intercept has no odds ratio: both sides leave it out.
                let (Some(a), Some(b)) = (a, b) else {
                    assert_eq!((a, b, f.name.as_str()), (None, None, "const"));
                    continue;
                };
                assert!(
                    (a - b).abs() <= 1e-8 * b.abs().max(1.0),
                    "{terms:?} {}: {a} vs {b}",
                    f.name
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federated_odds_ratios_over_mtls_equal_the_pooled_fit() {
    let dir = tempfile::tempdir().unwrap();
    let config = finished_rounds(dir.path());
    let sites = write_sites(dir.path());
    let aggregator = RunningAggregator::start(config.clone(), 0).await;
    let url = aggregator.url.clone();

    // A hostile S1 first: its certificate is real, its answers are not.
    let mut hostile = connect(dir.path(), "S1", &url).await;
    let task::Kind::Analysis(step0) = next_task(&mut hostile, "S1").await else {
        panic!("the rounds are over: the first task must be the analysis");
    };
    assert_eq!((step0.analysis.as_str(), step0.step), ("clinical-factors", 0));
    let report = |analysis: &str, step: u32, answer: Vec<u8>| AnalysisReport {
        site: "S1".into(),
        study: STUDY.into(),
        analysis: analysis.into(),
        step,
        answer,
    };
    let refused = hostile
        .report_analysis(report("clinical-factors", 0, vec![0xff; 40]))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("malformed analysis answer of site S1"),
        "{}",
        refused.message()
    );
    let fine = fedlnm_protocol::payload::encode(&fedlnm_shared::analysis::AnalysisAnswer::Refused {
        reason: "never sent".into(),
    });
    let refused = hostile
        .report_analysis(report("clinical-factors", 7, fine.clone()))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(
        refused
            .message()
            .contains("step 7 of analysis clinical-factors is not open"),
        "{}",
        refused.message()
    );
    let mut impostor = report("clinical-factors", 0, fine);
    impostor.site = "S2".into();
    let refused = hostile.report_analysis(impostor).await.unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::PermissionDenied,
        "{}",
        refused.message()
    );
    drop(hostile);

    // The real nodes answer every step and are then told the study is finished.
    let nodes: Vec<_> = SITES
        .iter()
        .map(|(site, ..)| {
            let node = fedlnm_node::federation::Node::new(site_config(dir.path(), site, &url));
            tokio::spawn(node.run())
        })
        .collect();
    for node in nodes {
        let summary = node.await.unwrap().unwrap();
        assert!(summary.rounds_trained.is_empty());
        assert!(summary.final_model.is_some());
    }
    aggregator.service.finished().await;
    aggregator.shut_down().await;

    let store = RoundStore::open(&config.state_dir).unwrap();
    let results = store.analyses().unwrap();
    let names: Vec<&str> = results.iter().map(|r| r.analysis.name.as_str()).collect();
    assert_eq!(names, ["clinical-factors", "location-and-contact"]);
    let included: Vec<PatientRecord> = sites[..3].iter().flat_map(|(_, r)| r.clone()).collect();
    for result in &results {
        assert_eq!(result.excluded.len(), 1, "{:?}", result.excluded);
        assert_eq!(result.excluded[0].site, "S4");
        assert!(
            result.excluded[0]
                .reason
                .contains("7 labelled patients is below the disclosure threshold of 10"),
            "{}",
            result.excluded[0].reason
        );
        let sizes: Vec<(&str, u64)> = result.sites.iter().map(|s| (s.site.as_str(), s.n)).collect();
        assert_eq!(sizes, [("S1", 260), ("S2", 200), ("S3", 140)]);
        assert_equals_pooled_fit(result, &included);
    }

    // A restart finds both results stored for the same configuration: the study is finished at once.
    let again = RunningAggregator::start(config.clone(), 0).await;
    assert!(again.service.is_finished());
    again.shut_down().await;
    assert_eq!(
        RoundStore::open(&config.state_dir).unwrap().analyses().unwrap(),
        results
    );
}
