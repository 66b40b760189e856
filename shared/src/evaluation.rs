//! Model predictions as plain data and the study's evaluation of them: AUC with CI, Youden
//! sensitivity/specificity, Brier, calibration (the statistics engine), and weighted kappa for T, N and
//! the overall stage on their declared scales (7, 3, 5). Burn-free.

use crate::features::{Example, N_N, N_T};
use crate::staging::{self, MCategory, NCategory, Stage, TCategory};
use crate::stats::binary::{self, BinaryMetrics};
use crate::stats::kappa::{self, KappaReport};
use crate::stats::{StatsError, calibration};
use serde::Serialize;

/// One patient's prediction. The overall stage is derived from age and the predicted T and N by the
/// AJCC rule, assuming M0 (distant metastasis is not visible on neck ultrasound).
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    pub patient_id: String,
    pub lnm_probability: f64,
    pub t_probabilities: Vec<f64>,
    pub n_probabilities: Vec<f64>,
    pub t: TCategory,
    pub n: NCategory,
    pub stage: Stage,
}

impl Prediction {
    /// The prediction from the model's probabilities (argmax for T and N).
    #[must_use]
    pub fn new(
        example: &Example,
        lnm_probability: f64,
        t_probabilities: &[f32],
        n_probabilities: &[f32],
    ) -> Self {
        let argmax = |p: &[f32]| {
            p.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map_or(0, |(index, _)| index)
        };
        let t = TCategory::ALL[argmax(t_probabilities).min(N_T - 1)];
        let n = NCategory::ALL[argmax(n_probabilities).min(N_N - 1)];
        Self {
            patient_id: example.patient_id.clone(),
            lnm_probability: lnm_probability.clamp(0.0, 1.0),
            t_probabilities: t_probabilities.iter().map(|&p| f64::from(p)).collect(),
            n_probabilities: n_probabilities.iter().map(|&p| f64::from(p)).collect(),
            t,
            n,
            stage: staging::overall_stage(example.inputs.age_years, t, n, MCategory::M0),
        }
    }
}

/// The metrics JSON of `evaluate`.
#[derive(Debug, Clone, Serialize)]
pub struct EvaluationReport {
    pub n_patients: usize,
    pub lnm: BinaryMetrics,
    pub calibration_bins: Vec<calibration::CalibrationBin>,
    pub t_kappa: KappaReport,
    pub n_kappa: KappaReport,
    pub stage_kappa: KappaReport,
}

/// Evaluates predictions against the examples' pathology (every example must be labelled; stage truth
/// is the pathological stage from the manifest, through `truth_stage`).
pub fn evaluate(
    examples: &[Example],
    predictions: &[Prediction],
    truth_stage: &[Stage],
) -> Result<EvaluationReport, StatsError> {
    let mut y = Vec::new();
    let mut s = Vec::new();
    let (mut t_true, mut t_pred, mut n_true, mut n_pred) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut stage_true, mut stage_pred) = (Vec::new(), Vec::new());
    for ((example, prediction), stage) in examples.iter().zip(predictions).zip(truth_stage) {
        let Some(targets) = example.targets else { continue };
        y.push(targets.lnm);
        s.push(prediction.lnm_probability);
        t_true.push(targets.t);
        t_pred.push(prediction.t.code());
        n_true.push(targets.n);
        n_pred.push(prediction.n.code());
        stage_true.push(stage.code());
        stage_pred.push(prediction.stage.code());
    }
    Ok(EvaluationReport {
        n_patients: y.len(),
        lnm: binary::binary_metrics(&y, &s)?,
        calibration_bins: calibration::calibration_bins(&y, &s, 10),
        t_kappa: kappa::cohen_kappa(&t_true, &t_pred, TCategory::ALL.len())?,
        n_kappa: kappa::cohen_kappa(&n_true, &n_pred, NCategory::ALL.len())?,
        stage_kappa: kappa::cohen_kappa(&stage_true, &stage_pred, Stage::ALL.len())?,
    })
}
