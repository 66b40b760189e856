//! The report tests' study: three committed rounds (two training sites, one external validation
//! site) whose metrics come from the statistics engine on generated scores, written as the aggregator
//! commits them.
#![allow(dead_code)] // Each test file uses its own part of the fixture.

use fedlnm_aggregator::report;
use fedlnm_shared::config::SiteRole;
use fedlnm_shared::federation::{
    AggregationKind, LocalTensors, PooledMetrics, RoundRecord, ScoreHistogram, ScoringStatistics, SiteCohort,
    SiteRoundMetrics, SiteValidation, StageConfusion,
};
use fedlnm_shared::stats::binary::binary_metrics;
use fedlnm_shared::stats::kappa::cohen_kappa;
use rand::{Rng as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution as _, Normal};
use std::path::{Path, PathBuf};

/// One site's validation of a model whose scores separate the classes by `separation` (logit scale).
pub fn site_metrics(
    seed: u64,
    site: &str,
    role: SiteRole,
    n_patients: usize,
    lnm_prevalence: f64,
    separation: f64,
) -> SiteValidation {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let noise = Normal::new(0.0, 1.0).unwrap();
    let y: Vec<bool> = (0..n_patients)
        .map(|_| rng.random::<f64>() < lnm_prevalence)
        .collect();
    let scores: Vec<f64> = y
        .iter()
        .map(|&positive| {
            let logit = -0.8 + if positive { separation } else { 0.0 } + noise.sample(&mut rng);
            1.0 / (1.0 + (-logit).exp())
        })
        .collect();
    let metrics = binary_metrics(&y, &scores).unwrap();
    // Pathological and predicted categories on each scale: the prediction is right with a
    // probability that grows with the model's separation, else a neighbouring category.
    let mut rate = |k: usize| {
        let truth: Vec<usize> = (0..n_patients).map(|_| rng.random_range(0..k)).collect();
        let predicted: Vec<usize> = truth
            .iter()
            .map(|&t| {
                if rng.random::<f64>() < 0.2 + 0.3 * separation {
                    t
                } else {
                    (t + rng.random_range(0..2)).min(k - 1)
                }
            })
            .collect();
        cohen_kappa(&truth, &predicted, k).unwrap()
    };
    let (t, n, stage) = (rate(7), rate(3), rate(5));
    let metrics = SiteRoundMetrics {
        site: site.to_owned(),
        role,
        n_patients: metrics.n,
        n_positive: metrics.n_pos,
        lnm_rate: metrics.lnm_rate,
        auc: metrics.auc,
        auc_ci_lower: metrics.auc_ci_lower,
        auc_ci_upper: metrics.auc_ci_upper,
        auc_variance: metrics.auc_var,
        youden_threshold: metrics.youden_threshold,
        sensitivity: metrics.youden_sensitivity,
        specificity: metrics.youden_specificity,
        brier: metrics.brier,
        calibration_intercept: metrics.calibration.calibration_intercept,
        calibration_slope: metrics.calibration.calibration_slope,
        calibration_slope_se: metrics.calibration.calibration_slope_se,
        kappa_t: t.quadratic.kappa,
        kappa_n: n.quadratic.kappa,
        kappa_stage: stage.quadratic.kappa,
        kappa_t_se: t.quadratic.se,
        kappa_n_se: n.quadratic.se,
        kappa_stage_se: stage.quadratic.se,
        cohort: Some(cohort(role, metrics.n, metrics.n_pos)),
        curves: Some(fedlnm_shared::federation::SiteCurves::of_scores(&y, &scores)),
        // As a FedBN study's sites score: the training sites with their own layers, the external
        // site with statistics re-estimated on its own pictures.
        normalisation: Some(ScoringStatistics::for_site(
            &LocalTensors::from_names(["image.bn1.gamma".to_owned()]),
            false,
            role,
        )),
    };
    SiteValidation {
        metrics,
        histogram: ScoreHistogram::from_scores(&y, &scores).unwrap(),
        stage_confusion: StageConfusion::from_reports(&t, &n, &stage),
    }
}

/// A site's flow and characteristics around its `validation` patients: a training site validates
/// on a fifth of its labelled patients; a few rows were excluded.
pub fn cohort(role: SiteRole, validation: u64, lnm: u64) -> SiteCohort {
    let labelled = if role == SiteRole::Train {
        5 * validation
    } else {
        validation
    };
    let excluded: std::collections::BTreeMap<String, u64> = [
        ("image file missing or unreadable".to_owned(), 3),
        ("age outside 18–100".to_owned(), 1),
    ]
    .into();
    let third = labelled / 3;
    SiteCohort {
        read: labelled + 4,
        excluded,
        included: labelled,
        labelled,
        lnm: if role == SiteRole::Train { 5 * lnm } else { lnm },
        training: labelled - validation,
        validation,
        age_mean: Some(44.5),
        age_sd: Some(12.25),
        male: labelled / 4,
        multifocal: labelled / 5,
        tirads: vec![
            0,
            labelled / 10,
            third,
            labelled - labelled / 10 - third - labelled / 6,
            labelled / 6,
        ],
    }
}

/// The record of a round whose pools are the sums of their sites' histograms (what the secure sum
/// yields).
pub fn round_record(round: u64, validations: Vec<SiteValidation>) -> RoundRecord {
    let pooled = |role: SiteRole| {
        let members: Vec<&SiteValidation> = validations.iter().filter(|v| v.metrics.role == role).collect();
        let mut histogram = ScoreHistogram::empty();
        let mut confusion = StageConfusion::empty();
        for member in &members {
            histogram.merge(&member.histogram).unwrap();
            confusion.add(&member.stage_confusion);
        }
        let names = members.iter().map(|v| v.metrics.site.clone()).collect();
        (!members.is_empty()).then(|| PooledMetrics {
            stage_confusion: Some(confusion),
            ..PooledMetrics::from_histogram(names, histogram).unwrap()
        })
    };
    let sites: Vec<SiteRoundMetrics> = validations.iter().map(|v| v.metrics.clone()).collect();
    let training: Vec<&SiteRoundMetrics> = sites.iter().filter(|site| site.role == SiteRole::Train).collect();
    RoundRecord {
        study: "lnm-synthetic".to_owned(),
        round,
        model_digest: format!("{:064x}", 0xabc0 + round),
        model_config_digest: format!("{:064x}", 0xc0f1),
        aggregation: if round == 0 {
            AggregationKind::Plain
        } else {
            AggregationKind::Secure
        },
        contributors: if round == 0 {
            Vec::new()
        } else {
            training.iter().map(|site| site.site.clone()).collect()
        },
        total_samples: if round == 0 {
            0
        } else {
            training.iter().map(|site| 4 * site.n_patients).sum()
        },
        dropped: Vec::new(),
        aggregation_seconds: 1.5 * round as f64,
        round_seconds: 30.0 * round as f64,
        committed_at: format!("2026-03-0{}T10:00:00Z", round + 1),
        pooled_train_sites: pooled(SiteRole::Train),
        pooled_validation_sites: pooled(SiteRole::Validate),
        privacy: None,
        sites,
    }
}

/// Rounds 0 (untrained: no separation; the validation site saw only LNM-negative patients), 1 and 2.
pub fn study_rounds() -> Vec<RoundRecord> {
    (0..3_u64)
        .map(|round| {
            let separation = 0.9 * round as f64;
            let validation_prevalence = if round == 0 { 0.0 } else { 0.35 };
            round_record(
                round,
                vec![
                    site_metrics(10 + round, "S1", SiteRole::Train, 240, 0.30, separation),
                    site_metrics(20 + round, "S2", SiteRole::Train, 180, 0.42, separation * 0.8),
                    site_metrics(
                        30 + round,
                        "V1",
                        SiteRole::Validate,
                        150,
                        validation_prevalence,
                        separation,
                    ),
                ],
            )
        })
        .collect()
}

pub fn round_dir(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join(report::ROUNDS_DIR).join(name)
}

/// Writes the rounds as the aggregator commits them.
pub fn write_round(state_dir: &Path, folder_name: &str, record: &RoundRecord) {
    let folder = round_dir(state_dir, folder_name);
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(
        folder.join(report::ROUND_FILE),
        serde_json::to_vec(record).unwrap(),
    )
    .unwrap();
    std::fs::write(folder.join("global.safetensors"), b"not read by the report").unwrap();
}

pub fn committed_study(records: &[RoundRecord]) -> tempfile::TempDir {
    let state = tempfile::tempdir().unwrap();
    for record in records {
        write_round(state.path(), &format!("round-{:04}", record.round), record);
    }
    state
}
