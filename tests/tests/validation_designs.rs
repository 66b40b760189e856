//! The study's validation designs, each a set of real simulated studies (nodes and aggregator over
//! mutual-TLS gRPC on loopback) on the same tiny synthetic sites: leave-one-site-out holds every site
//! out once and summarises the held-out AUCs by random effects; k-fold cross-validation validates
//! study j on fold j of every training site, each patient once; the model comparison trains the three
//! modalities on the same patients and pools each site's paired ΔAUC; the methods comparison trains
//! centralised, single-site and federated models on the same patients. The design's rows are read back
//! from the studies' committed rounds, and its page opens in a browser.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is a failed test.

use fedlnm_aggregator::report::html::{DesignRow, mean_and_sd, random_effects};
use fedlnm_aggregator::store::RoundStore;
use fedlnm_e2e::browser;
use fedlnm_shared::config::{ComputeDevice, SiteRole};
use fedlnm_shared::federation::{RoundRecord, SiteValidation};
use fedlnm_sim::designs::{DESIGN_JSON, DESIGN_MARKDOWN, k_fold, leave_one_site_out, model_comparison};
use fedlnm_sim::{Design, SimulateArgs, SimulationOutcome};
use std::path::Path;

fn args(out: &Path, design: Design) -> SimulateArgs {
    SimulateArgs {
        out: out.to_path_buf(),
        rounds: 1,
        train_sites: 2,
        validate_sites: 1,
        patients: 48,
        image_size: 32,
        base_width: 8,
        local_epochs: 1,
        learning_rate: 2e-3,
        plain: false,
        fedbn: false,
        proximal_mu: 0.0,
        noise_multiplier: 0.0,
        clip_norm: 1.0,
        seed: 5,
        device: ComputeDevice::Cpu,
        design,
        folds: 2,
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

fn final_record(study: &SimulationOutcome) -> RoundRecord {
    RoundStore::open_existing(&study.state_dir)
        .unwrap()
        .load_record(study.rounds)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leave_one_site_out_holds_every_site_out_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("loso");
    let design = leave_one_site_out(&args(&out, Design::LeaveOneSiteOut))
        .await
        .unwrap();
    let labels: Vec<&str> = design.results.iter().map(|row| row.label.as_str()).collect();
    assert_eq!(labels, ["S1", "S2", "S3"]);
    for ((name, study), row) in design.studies.iter().zip(&design.results) {
        assert_eq!(name, &format!("held-out-{}", row.label));
        let record = final_record(study);
        // The held-out site never trained: it is the study's validate-only site.
        assert!(
            !record.contributors.contains(&row.label),
            "{name}: {:?}",
            record.contributors
        );
        assert_eq!(record.contributors.len(), 2);
        let held_out = record.sites.iter().find(|s| s.site == row.label).unwrap();
        assert_eq!(held_out.role, SiteRole::Validate);
        // Its row is its validation of its study's final model, all its patients.
        assert_eq!(
            (row.auc, row.variance, row.n),
            (held_out.auc, held_out.auc_variance, 48)
        );
        assert_eq!(row.model_digest, record.model_digest);
    }
    // The summary is the random-effects meta-analysis of the rows, and the files hold them.
    let stored: Vec<DesignRow> =
        serde_json::from_slice(&std::fs::read(out.join(DESIGN_JSON)).unwrap()).unwrap();
    assert_eq!(stored, design.results);
    let pooled = random_effects(&design.results).expect("three held-out AUCs");
    let markdown = std::fs::read_to_string(out.join(DESIGN_MARKDOWN)).unwrap();
    let expected = format!(
        "{:.3} ({:.3}–{:.3})",
        pooled.auc, pooled.ci_lower, pooled.ci_upper
    );
    assert!(markdown.contains(&expected), "{markdown}");

    let dom = browser::dump_dom(&browser::file_url(&design.page));
    assert_eq!(browser::count(&dom, "<g class=\"row\""), 3);
    assert_eq!(browser::count(&dom, "<g class=\"summary\""), 1);
    assert!(dom.contains(&expected));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k_fold_validates_every_patient_of_every_training_site_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("kfold");
    let design = k_fold(&args(&out, Design::KFold)).await.unwrap();
    assert_eq!(design.studies.len(), 2);
    let mut validated = std::collections::BTreeMap::<String, u64>::new();
    for ((name, study), row) in design.studies.iter().zip(&design.results) {
        let record = final_record(study);
        assert_eq!(record.contributors, ["S1", "S2"], "{name}");
        let pool = record.pooled_train_sites.as_ref().unwrap();
        assert_eq!((row.auc, row.n), (pool.auc, pool.n_patients));
        for site in record.sites.iter().filter(|s| s.role == SiteRole::Train) {
            let cohort = site.cohort.as_ref().unwrap();
            assert_eq!(cohort.training + cohort.validation, 48, "{name} {}", site.site);
            *validated.entry(site.site.clone()).or_default() += cohort.validation;
        }
        // The external site scores all its patients in every fold's study.
        let external = record
            .sites
            .iter()
            .find(|s| s.role == SiteRole::Validate)
            .unwrap();
        assert_eq!(external.n_patients, 48);
        // Each node kept its own validation of the fold's final model.
        let (_, work) = study
            .node_work_dirs
            .iter()
            .find(|(site, _)| site == "S1")
            .unwrap();
        let own: SiteValidation = serde_json::from_slice(
            &std::fs::read(
                work.join("validation")
                    .join(format!("round-{:04}.json", study.rounds)),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(Some(&own.metrics), record.sites.iter().find(|s| s.site == "S1"));
    }
    // Over the two folds every patient of every training site was validated exactly once.
    assert_eq!(validated, [("S1".to_owned(), 48), ("S2".to_owned(), 48)].into());
    let (mean, sd) = mean_and_sd(&design.results).unwrap();
    let markdown = std::fs::read_to_string(out.join(DESIGN_MARKDOWN)).unwrap();
    assert!(
        markdown.contains(&format!("mean {mean:.3} (SD {sd:.3})")),
        "{markdown}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_comparison_pools_each_sites_paired_delta_auc() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("comparison");
    let design = model_comparison(&args(&out, Design::ModelComparison))
        .await
        .unwrap();
    let labels: Vec<&str> = design.results.iter().map(|c| c.label.as_str()).collect();
    assert_eq!(labels, ["multimodal − image-only", "multimodal − report-only"]);
    let records: Vec<RoundRecord> = design
        .studies
        .iter()
        .map(|(_, study)| final_record(study))
        .collect();
    for (comparison, other) in design.results.iter().zip(&records[1..]) {
        assert_eq!(comparison.rows.len(), 3);
        for row in &comparison.rows {
            // Each side of the paired test is the AUC that site reported of that study's final model:
            // the same patients, scored by the two models.
            let reported =
                |record: &RoundRecord| record.sites.iter().find(|s| s.site == row.site).unwrap().clone();
            let (a, b) = (reported(&records[0]), reported(other));
            assert_eq!((row.n, a.n_patients, b.n_patients), (a.n_patients, row.n, row.n));
            assert!((row.auc_a - a.auc.unwrap()).abs() < 1e-12, "{}", row.site);
            assert!((row.auc_b - b.auc.unwrap()).abs() < 1e-12, "{}", row.site);
            assert!((row.delta - (row.auc_a - row.auc_b)).abs() < 1e-12);
        }
    }
    let markdown = std::fs::read_to_string(out.join(DESIGN_MARKDOWN)).unwrap();
    for comparison in &design.results {
        let pooled = comparison.pooled().expect("three sites with an SE");
        let expected = format!(
            "{:+.3} ({:+.3} to {:+.3})",
            pooled.estimate, pooled.ci_lower, pooled.ci_upper
        );
        assert!(markdown.contains(&expected), "{expected} in {markdown}");
    }
    let dom = browser::dump_dom(&browser::file_url(&design.page));
    assert_eq!(browser::count(&dom, "<g class=\"row\""), 6);
    assert_eq!(browser::count(&dom, "<g class=\"summary\""), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_compare_the_federation_with_pooled_and_single_site_training() {
    use fedlnm_aggregator::report::html::MethodRow;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("methods");
    let design = fedlnm_sim::methods::methods(&SimulateArgs {
        rounds: 2,
        adabn: true,
        ..args(&out, Design::Methods)
    })
    .await
    .unwrap();
    let rows = &design.results;
    let names: Vec<&str> = rows.iter().map(|row| row.method.as_str()).collect();
    assert_eq!(
        names[..7],
        [
            "centralised",
            "S1 alone",
            "S2 alone",
            "FedAvg (secure)",
            "FedAvg (plain)",
            "FedProx μ = 0.1",
            "FedBN (secure)"
        ]
    );
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("data/S3/synth_summary.json")).unwrap()).unwrap();
    let oracle = summary["oracle_auc"]["multimodal"].as_f64().unwrap();
    for row in rows {
        // Every model is scored on all of the external site's patients.
        assert_eq!(row.n, 48, "{}", row.method);
        let auc = row.auc.unwrap();
        assert!(row.ci_lower.unwrap() <= auc && auc <= row.ci_upper.unwrap());
        assert!((row.gap_to_oracle.unwrap() - (auc - oracle)).abs() < 1e-12);
        match (&row.vs_centralised, row.method.as_str()) {
            (None, "centralised") => {}
            (Some(versus), _) => {
                // Δ is this AUC minus the centralised one, on the same patients.
                assert!(
                    (versus.delta - (auc - rows[0].auc.unwrap())).abs() < 1e-9,
                    "{}",
                    row.method
                );
                assert!(versus.p.is_none_or(|p| (0.0..=1.0).contains(&p)));
            }
            (None, method) => panic!("{method} is not compared with the centralised model"),
        }
    }
    // A federated row is its study's rounds: the external AUC of each, the last one its final.
    assert_eq!(design.studies.len(), 4);
    for (row, (name, study)) in rows[3..7].iter().zip(&design.studies) {
        assert_eq!(&row.method, name);
        assert!(row.federated);
        let record = final_record(study);
        let external = record.sites.iter().find(|s| s.site == "S3").unwrap();
        assert_eq!(row.auc_by_round.len(), 2);
        assert_eq!(row.auc_by_round[1], (2, external.auc.unwrap()));
        assert_eq!(row.model_digest.as_deref(), Some(record.model_digest.as_str()));
        assert_eq!(
            row.internal_auc,
            record.pooled_train_sites.as_ref().and_then(|p| p.auc)
        );
    }
    // A study whose round 1 scored a better pooled internal AUC than its last has one more row: that
    // round's model (the federated counterpart of early stopping), scored on the same patients;
    // never FedBN's, whose normalisation layers stay at the sites.
    for (name, study) in &design.studies[..3] {
        let store = RoundStore::open_existing(&study.state_dir).unwrap();
        let internal = |round| {
            store
                .load_record(round)
                .unwrap()
                .pooled_train_sites
                .and_then(|p| p.auc)
        };
        let best = rows
            .iter()
            .find(|row| row.method == format!("{name}, round 1 (best internal AUC)"));
        match (internal(1), internal(2), best) {
            (Some(first), Some(last), Some(row)) if first > last => {
                assert!(row.federated && row.vs_centralised.is_some());
                assert!((row.internal_auc.unwrap() - first).abs() < 1e-6, "{name}");
                let digest = store.load(1).unwrap().model.digest.clone();
                assert_eq!(row.model_digest.as_deref(), Some(digest.as_str()));
            }
            (first, last, None) => assert!(first <= last, "{name}: {first:?} > {last:?} has no row"),
            (first, last, Some(_)) => panic!("{name}: a best-round row for {first:?} against {last:?}"),
        }
    }
    // With --adabn every model is scored again, each scoring site with its own normalisation
    // statistics (FedBN aside: its external site already adapts): the single-shot models, then each
    // study's final model, after the best-round rows.
    let adapted: Vec<&MethodRow> = rows
        .iter()
        .filter(|row| row.method.ends_with(" + AdaBN"))
        .collect();
    let names: Vec<&str> = adapted.iter().map(|row| row.method.as_str()).collect();
    assert_eq!(
        names,
        [
            "centralised + AdaBN",
            "S1 alone + AdaBN",
            "S2 alone + AdaBN",
            "FedAvg (secure) + AdaBN",
            "FedAvg (plain) + AdaBN",
            "FedProx μ = 0.1 + AdaBN"
        ]
    );
    assert!(
        rows[7..rows.len() - adapted.len()]
            .iter()
            .all(|row| row.method.ends_with("(best internal AUC)"))
    );
    for row in &adapted {
        // The model scored differs by site: no one digest.
        assert!(
            row.model_digest.is_none() && row.auc_by_round.is_empty(),
            "{}",
            row.method
        );
        assert_eq!(row.federated, row.method.starts_with("Fed"), "{}", row.method);
    }
    // The external AUC of FedAvg (secure) + AdaBN, again from its study's final model: the running
    // statistics re-estimated on all of S3's patients' images (the seed's shuffles), then scored.
    let committed = RoundStore::open_existing(&design.studies[0].1.state_dir)
        .unwrap()
        .load(2)
        .unwrap();
    let model = &committed.model.config;
    let loaded =
        fedlnm_node::commands::model::load_examples(&out.join("data/S3"), model, true, false).unwrap();
    let external =
        fedlnm_node::federation::SiteExamples::split(loaded, SiteRole::Validate, 0.2, None).unwrap();
    let weights = fedlnm_model::train::adapt_normalisation(
        ComputeDevice::Cpu,
        model,
        &committed.model.weights,
        &external.validation,
        5,
    )
    .unwrap();
    assert_ne!(
        weights, committed.model.weights,
        "AdaBN changes the running statistics"
    );
    let predictions =
        fedlnm_model::train::predict(ComputeDevice::Cpu, model, &weights, &external.validation, 32).unwrap();
    let metrics = fedlnm_shared::federation::SiteRoundMetrics::from_predictions(
        "S3",
        SiteRole::Validate,
        &external.validation,
        &predictions,
        &external.validation_stages,
    )
    .unwrap()
    .metrics;
    assert_eq!(adapted[3].auc, metrics.auc);
    let stored: Vec<MethodRow> =
        serde_json::from_slice(&std::fs::read(out.join(DESIGN_JSON)).unwrap()).unwrap();
    assert_eq!(&stored, rows);
    let markdown = std::fs::read_to_string(out.join(DESIGN_MARKDOWN)).unwrap();
    assert!(markdown.contains(&format!("Oracle AUC on the external site (S3): {oracle:.3}")));
    let dom = browser::dump_dom(&browser::file_url(&design.page));
    let start = dom
        .find("<figure class=\"chart methods-by-round\">")
        .expect("the by-round figure");
    let end = start + dom[start..].find("</figure>").unwrap();
    let by_round = rows.iter().filter(|row| !row.auc_by_round.is_empty()).count();
    assert!(dom[start..end].matches("<polyline").count() >= by_round);
}

/// With `rounds.normalisation_statistics = "site"` every site, training or validate-only, scores
/// the round's model after re-estimating its normalisation statistics on its own validation patients'
/// pictures: the scores each node kept are those of the adapted model (recomputed here from the
/// committed model, the site's split and its seed), not the model's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sites_score_with_their_own_normalisation_statistics_when_the_study_asks() {
    use fedlnm_model::train;
    use fedlnm_node::federation::{SiteExamples, adapt_seed};
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("site-statistics");
    let study = fedlnm_sim::simulate(&SimulateArgs {
        site_statistics: true,
        ..args(&out, Design::Single)
    })
    .await
    .unwrap();
    let committed = RoundStore::open_existing(&study.state_dir)
        .unwrap()
        .load(1)
        .unwrap();
    let model = &committed.model.config;
    let kit = study.state_dir.parent().and_then(Path::parent).unwrap();
    for (site, role) in [("S1", SiteRole::Train), ("S3", SiteRole::Validate)] {
        let node =
            fedlnm_shared::config::NodeConfig::load(&kit.join("sites").join(site).join("node.toml")).unwrap();
        let loaded =
            fedlnm_node::commands::model::load_examples(&out.join("data").join(site), model, true, false)
                .unwrap();
        let patients = SiteExamples::split(loaded, role, node.validation_fraction, None)
            .unwrap()
            .validation;
        let own = &committed.model.weights;
        let adapted =
            train::adapt_normalisation(ComputeDevice::Cpu, model, own, &patients, adapt_seed(site, 1))
                .unwrap();
        let kept = study.final_scores(site).unwrap();
        assert_eq!(kept.len(), patients.len(), "{site}");
        let scores = |weights| {
            train::predict(ComputeDevice::Cpu, model, weights, &patients, 32)
                .unwrap()
                .into_iter()
                .map(|p| p.lnm_probability)
                .collect::<Vec<f64>>()
        };
        let (expected, unadapted) = (scores(&adapted), scores(own));
        for (kept, expected) in kept.iter().zip(&expected) {
            assert!(
                (kept.score - expected).abs() < 1e-5,
                "{site} {}: {} against {expected}",
                kept.patient_id,
                kept.score
            );
        }
        let moved = kept
            .iter()
            .zip(&unadapted)
            .filter(|(k, u)| (k.score - **u).abs() > 1e-4)
            .count();
        assert!(moved > 0, "{site}: the scores are the model's own statistics'");
        // The committed record says so, for the report.
        let stated = committed.record.sites.iter().find(|s| s.site == site).unwrap();
        assert_eq!(
            stated.normalisation,
            Some(fedlnm_shared::federation::ScoringStatistics::SiteReestimated),
            "{site}"
        );
    }
}
