//! Model predictions as plain data and the study's evaluation of them: AUC with CI, Youden
//! sensitivity/specificity, Brier, calibration (the statistics engine), and weighted kappa for T, N and
//! the overall stage on their declared scales (7, 3, 5). Burn-free.

use crate::features::{Example, N_N, N_T};
use crate::staging::{self, MCategory, NCategory, Stage, TCategory};
use crate::stats::binary::{self, BinaryMetrics};
use crate::stats::kappa::{self, KappaReport};
use crate::stats::{StatsError, calibration};
use serde::Serialize;

/// One patient's prediction. T and N are the categories that minimise the expected squared ordinal
/// distance under the heads' probabilities ([`ordinal_decision`]); the overall stage is derived from
/// age and those T and N by the AJCC rule, assuming M0 (distant metastasis is not visible on neck
/// ultrasound), so that the three always agree.
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
    /// The prediction from the model's probabilities ([`ordinal_decision`] for T and N).
    #[must_use]
    pub fn new(
        example: &Example,
        lnm_probability: f64,
        t_probabilities: &[f32],
        n_probabilities: &[f32],
    ) -> Self {
        let t = TCategory::ALL[ordinal_decision(t_probabilities).min(N_T - 1)];
        let n = NCategory::ALL[ordinal_decision(n_probabilities).min(N_N - 1)];
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

/// The category of an ordinal scale that minimises the expected squared distance to the truth under
/// the probabilities `p` (ties to the lower category): the Bayes decision for the disagreement that
/// quadratic-weighted κ counts. Where the mass is split between distant categories it picks the one
/// between them, which argmax never does (measured on the main study's sites: quadratic κ of N 0.38
/// with argmax against 0.41, of the derived stage 0.47 against 0.53; README, "Stage").
#[must_use]
pub fn ordinal_decision(p: &[f32]) -> usize {
    let loss = |s: usize| -> f64 {
        p.iter()
            .enumerate()
            .map(|(j, &pj)| f64::from(pj) * (s as f64 - j as f64).powi(2))
            .sum()
    };
    (0..p.len()).fold(0, |best, s| if loss(s) < loss(best) { s } else { best })
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

#[cfg(test)]
mod tests {
    use super::ordinal_decision;

    #[test]
    fn the_ordinal_decision_minimises_the_expected_squared_distance() {
        // Mass split between the ends: the middle, where argmax would pick an end.
        assert_eq!(ordinal_decision(&[0.45, 0.1, 0.45]), 1);
        assert_eq!(ordinal_decision(&[0.5, 0.0, 0.0, 0.5]), 1); // a tie: the lower of 1 and 2
        // A clear mode stays the mode.
        assert_eq!(ordinal_decision(&[0.7, 0.2, 0.1]), 0);
        assert_eq!(ordinal_decision(&[0.0, 0.1, 0.1, 0.1, 0.2, 0.1, 0.4]), 4);
        // Against brute force: the chosen category's expected loss is the smallest.
        let p = [0.05_f32, 0.3, 0.1, 0.05, 0.2, 0.2, 0.1];
        let loss = |s: usize| -> f64 {
            p.iter()
                .enumerate()
                .map(|(j, &q)| f64::from(q) * (s as f64 - j as f64).powi(2))
                .sum()
        };
        let chosen = ordinal_decision(&p);
        assert!((0..p.len()).all(|s| loss(chosen) <= loss(s)));
        assert_eq!(ordinal_decision(&[]), 0);
    }
}
