//! Scoring a site folder with a checkpoint: the predictions CSV and the metrics JSON of the statistics
//! engine, with the paired DeLong test against other models' predictions on the same patients.

use super::examples::{LoadedExamples, load_examples};
use crate::commands::compare::{PatientScore, paired_comparison, read_predictions};
use anyhow::{Context as _, bail};
use fedlnm_model::train;
use fedlnm_shared::checkpoint::Checkpoint;
use fedlnm_shared::config::{ComputeDevice, SiteRole};
use fedlnm_shared::evaluation::{self, EvaluationReport};
use fedlnm_shared::features::Example;
use fedlnm_shared::federation::{LocalTensors, ScoringStatistics};
use fedlnm_shared::staging::{NCategory, Stage, TCategory};
use std::path::PathBuf;

/// One evaluation, as plain data (what `evaluate` builds from its command line).
#[derive(Debug, Clone)]
pub struct EvaluationJob {
    /// A checkpoint written by training (its config is stored inside).
    pub checkpoint: PathBuf,
    /// The site folder to score.
    pub data: PathBuf,
    /// Output folder (created): predictions.csv and, with labelled patients, metrics.json.
    pub out: PathBuf,
    /// Where to predict; for CUDA, prepared with [`super::prepare_device`] to keep its autotune cache.
    pub device: ComputeDevice,
    /// Re-estimate the model's batch-normalisation statistics on this site's pictures before scoring
    /// (AdaBN; no label is read): a model trained by FedAvg, scored as a study with
    /// `rounds.normalisation_statistics = "site"` scored it.
    pub adapt_normalisation: bool,
    /// Other models' `predictions.csv` on the same site: each compared with this model by the paired
    /// DeLong test on the labelled patients (matched by patient id), written to metrics.json.
    pub compare_with: Vec<PathBuf>,
}

/// The seed of `evaluate`'s AdaBN shuffles (any fixed value: the scores are then reproducible).
const ADAPT_SEED: u64 = 0;

/// What an evaluation computed for the labelled patients.
#[derive(Debug, Clone)]
pub struct EvaluationSummary {
    pub report: EvaluationReport,
    /// The labelled patients' LNM truth and predicted probability, in file order.
    pub lnm_true: Vec<bool>,
    pub lnm_score: Vec<f64>,
}

/// Writes `predictions.csv` for every patient and `metrics.json` for the labelled ones; returns the
/// metrics and the labelled patients' scores (`None` when no patient is labelled).
///
/// # Errors
/// An unusable checkpoint or site folder, a device this build cannot use, an output file that
/// cannot be written, or a `compare_with` file that is unreadable or holds other patients or
/// outcomes, or a site without labelled patients to compare on (named; checked before anything is
/// scored).
pub fn evaluate_site(job: &EvaluationJob) -> anyhow::Result<Option<EvaluationSummary>> {
    let references = job
        .compare_with
        .iter()
        .map(|file| Ok((file.clone(), read_predictions(file)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let Checkpoint { config, weights } = Checkpoint::read(&job.checkpoint)?;
    let LoadedExamples { examples, stages, .. } = load_examples(&job.data, &config, false, false)?;
    let labelled: Vec<usize> = (0..examples.len())
        .filter(|&i| examples[i].targets.is_some())
        .collect();
    if !references.is_empty() && labelled.is_empty() {
        bail!(
            "--compare-with compares the two models on labelled patients, and {} has none (no \
             pathology labels): nothing was scored or written",
            job.data.display()
        );
    }
    // The study's rule for a site scoring a model without layers of its own (no FedBN).
    let statistics = ScoringStatistics::for_site(
        &LocalTensors::default(),
        job.adapt_normalisation,
        SiteRole::Validate,
    );
    let adabn_seed = statistics.re_estimates().then_some(ADAPT_SEED);
    let predictions = train::predict_at_site(job.device, &config, &weights, &examples, 32, adabn_seed)?;
    let out = &job.out;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let csv_file = out.join("predictions.csv");
    let mut writer =
        csv::Writer::from_path(&csv_file).with_context(|| format!("cannot write {}", csv_file.display()))?;
    let mut header: Vec<String> = ["patient_id", "lnm_score", "t_pred", "n_pred", "stage_pred"]
        .map(String::from)
        .to_vec();
    header.extend(["lnm_true", "t_true", "n_true", "stage_true"].map(String::from));
    // The heads' probabilities, for analyses of the predicted categories (one column per category).
    header.extend(TCategory::ALL.iter().map(|t| format!("p_{t}")));
    header.extend(NCategory::ALL.iter().map(|n| format!("p_{n}")));
    writer.write_record(&header)?;
    for ((example, prediction), stage) in examples.iter().zip(&predictions).zip(&stages) {
        let truth = example.targets.map(|t| {
            [
                u8::from(t.lnm).to_string(),
                t.t.to_string(),
                t.n.to_string(),
                stage.map_or(String::new(), |s| s.code().to_string()),
            ]
        });
        let [lnm_true, t_true, n_true, stage_true] = truth.unwrap_or_default();
        let mut record = vec![
            prediction.patient_id.clone(),
            format!("{:.6}", prediction.lnm_probability),
            prediction.t.code().to_string(),
            prediction.n.code().to_string(),
            prediction.stage.code().to_string(),
            lnm_true,
            t_true,
            n_true,
            stage_true,
        ];
        record.extend(
            prediction
                .t_probabilities
                .iter()
                .chain(&prediction.n_probabilities)
                .map(|p| format!("{p:.6}")),
        );
        writer.write_record(&record)?;
    }
    writer.flush()?;
    if labelled.is_empty() {
        tracing::warn!("no labelled patients: predictions written, no metrics");
        return Ok(None);
    }
    let pick = |i: &usize| examples[*i].clone();
    let labelled_examples: Vec<Example> = labelled.iter().map(pick).collect();
    let labelled_predictions: Vec<_> = labelled.iter().map(|&i| predictions[i].clone()).collect();
    let labelled_stages: Vec<Stage> = labelled.iter().filter_map(|&i| stages[i]).collect();
    let report = evaluation::evaluate(&labelled_examples, &labelled_predictions, &labelled_stages)?;
    let own = PatientScore::of_predictions(&labelled_examples, &labelled_predictions);
    // Δ = this model's AUC minus the reference's, on the same labelled patients.
    let versus = references
        .iter()
        .map(|(file, theirs)| {
            let test = paired_comparison(&own, theirs)
                .with_context(|| format!("this model against {}", file.display()))?;
            tracing::info!(
                delta = test.delta,
                ci_lower = test.ci_lower,
                ci_upper = test.ci_upper,
                p = test.p,
                "paired DeLong against {}",
                file.display()
            );
            Ok(serde_json::json!({
                "reference": file.display().to_string(),
                "paired_delong": test,
            }))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let metrics = serde_json::json!({
        "checkpoint": job.checkpoint.display().to_string(),
        "config_digest": config.digest(),
        // Which normalisation statistics scored: part of what the figures measure.
        "normalisation": statistics,
        "metrics": report,
        "versus": versus,
    });
    let metrics_file = out.join("metrics.json");
    std::fs::write(&metrics_file, serde_json::to_string_pretty(&metrics)?)
        .with_context(|| format!("cannot write {}", metrics_file.display()))?;
    tracing::info!(
        n = report.n_patients,
        auc = report.lnm.auc,
        "evaluation written to {}",
        out.display()
    );
    Ok(Some(EvaluationSummary {
        report,
        lnm_true: labelled_examples
            .iter()
            .map(|e| e.targets.is_some_and(|t| t.lnm))
            .collect(),
        lnm_score: labelled_predictions.iter().map(|p| p.lnm_probability).collect(),
    }))
}
