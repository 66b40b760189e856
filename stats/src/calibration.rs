//! Calibration of predicted probabilities: logistic recalibration of logit(s) (intercept and slope),
//! calibration-in-the-large (the intercept with the slope fixed at 1), and binned observed-vs-predicted
//! points for the calibration plot.
//!
//! Scores are clipped to [`CLIP`, 1 − `CLIP`] before the logit, so that a model that outputs exactly
//! 0 or 1 (a saturated f32 sigmoid) still has a finite logit.

use super::design::{DesignSpec, TermColumn, TermSpec};
use super::logistic::{self, FitOptions, FitStatus};
use super::sum::CompensatedSum;
use serde::Serialize;

/// Scores are clipped to [CLIP, 1 − CLIP] before taking logit(s).
pub const CLIP: f64 = 1e-12;

/// How well predicted probabilities agree with observed outcomes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Calibration {
    /// a in logit P(y = 1) = a + b·logit(s); `None` unless the fit is `ok` (both classes, no separation).
    pub calibration_intercept: Option<f64>,
    /// b in the same model: 1 is ideal, below 1 means predictions too extreme.
    pub calibration_slope: Option<f64>,
    /// a in logit P(y = 1) = a + logit(s) (offset, slope fixed at 1): 0 is ideal, above 0 means the
    /// model under-predicts on average. `None` with a single class.
    pub calibration_in_the_large: Option<f64>,
}

/// One point of the calibration plot: a group of patients of similar predicted risk.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CalibrationBin {
    pub n: u64,
    pub mean_predicted: f64,
    pub observed_rate: f64,
}

/// Calibration intercept, slope and calibration-in-the-large of scores `s` for outcomes `y`
/// (equal lengths, scores in [0, 1], checked by the caller).
#[must_use]
pub fn calibration(y: &[bool], s: &[f64]) -> Calibration {
    let logits: Vec<f64> = s.iter().map(|&si| clipped_logit(si)).collect();
    let (intercept, slope) = recalibration_fit(y, &logits).unzip();
    Calibration {
        calibration_intercept: intercept,
        calibration_slope: slope,
        calibration_in_the_large: intercept_with_offset(y, &logits),
    }
}

/// Equal-count bins of patients sorted by score (at most `bins`), for the calibration plot.
#[must_use]
pub fn calibration_bins(y: &[bool], s: &[f64], bins: usize) -> Vec<CalibrationBin> {
    let mut order: Vec<usize> = (0..s.len()).collect();
    order.sort_by(|&a, &b| s[a].total_cmp(&s[b]));
    let bins = bins.clamp(1, s.len().max(1));
    (0..bins)
        .map(|b| &order[b * order.len() / bins..(b + 1) * order.len() / bins])
        .filter(|rows| !rows.is_empty())
        .map(|rows| {
            let n = rows.len() as f64;
            let (mut predicted, mut observed) = (CompensatedSum::default(), 0_u64);
            for &i in rows {
                predicted.add(s[i]);
                observed += u64::from(y[i]);
            }
            CalibrationBin {
                n: rows.len() as u64,
                mean_predicted: predicted.total() / n,
                observed_rate: observed as f64 / n,
            }
        })
        .collect()
}

fn clipped_logit(score: f64) -> f64 {
    let p = score.clamp(CLIP, 1.0 - CLIP);
    (p / (1.0 - p)).ln()
}

/// (a, b) of logit P(y) = a + b·logit(s), by the study's logistic regression engine.
fn recalibration_fit(y: &[bool], logits: &[f64]) -> Option<(f64, f64)> {
    let spec = DesignSpec::new(vec![TermSpec::numeric("logit_score")]).ok()?;
    let design = spec.build(y.len(), &[TermColumn::Numeric(logits)]).ok()?;
    let fit = logistic::fit(&design, y, FitOptions::default()).ok()?;
    if fit.status != FitStatus::Ok {
        return None;
    }
    Some((fit.terms.first()?.coef?, fit.terms.get(1)?.coef?))
}

/// a of logit P(y) = a + logit(s): one-parameter Newton on Σ (y − σ(a + o)) = 0, which is concave
/// and has a finite root whenever both classes are present.
fn intercept_with_offset(y: &[bool], offsets: &[f64]) -> Option<f64> {
    let positives = y.iter().filter(|&&v| v).count();
    if positives == 0 || positives == y.len() {
        return None;
    }
    let mut a = 0.0_f64;
    for _ in 0..logistic::MAX_ITERATIONS {
        let (mut score, mut information) = (CompensatedSum::default(), CompensatedSum::default());
        for (&yi, &o) in y.iter().zip(offsets) {
            let mu = 1.0 / (1.0 + (-(a + o)).exp());
            score.add(f64::from(u8::from(yi)) - mu);
            information.add(mu * (1.0 - mu));
        }
        let step = score.total() / information.total();
        if !step.is_finite() {
            return None;
        }
        a += step;
        if step.abs() <= logistic::TOLERANCE {
            return Some(a);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Outcomes drawn so that P(y = 1) = σ(a + b·logit(s)) on a fine grid of scores, deterministically:
    /// for each score, k of 1000 copies are positive with k = round(1000·σ(...)).
    fn recalibrated_cohort(a: f64, b: f64) -> (Vec<bool>, Vec<f64>) {
        let mut y = Vec::new();
        let mut s = Vec::new();
        for step in 1..20 {
            let score = f64::from(step) / 20.0;
            let p = 1.0 / (1.0 + (-(a + b * clipped_logit(score))).exp());
            let positives = (p * 1000.0).round() as usize;
            for copy in 0..1000 {
                y.push(copy < positives);
                s.push(score);
            }
        }
        (y, s)
    }

    #[test]
    fn recovers_the_recalibration_that_generated_the_outcomes() {
        for (a, b) in [(0.0, 1.0), (0.5, 0.7), (-0.3, 1.4)] {
            let (y, s) = recalibrated_cohort(a, b);
            let c = calibration(&y, &s);
            let (fitted_a, fitted_b) = (c.calibration_intercept.unwrap(), c.calibration_slope.unwrap());
            assert!(
                (fitted_a - a).abs() < 0.02 && (fitted_b - b).abs() < 0.02,
                "({a}, {b}) -> ({fitted_a}, {fitted_b})"
            );
        }
        let (y, s) = recalibrated_cohort(0.0, 1.0);
        assert!(calibration(&y, &s).calibration_in_the_large.unwrap().abs() < 0.01);
    }

    #[test]
    fn undefined_with_one_class_and_finite_at_saturated_scores() {
        let c = calibration(&[true, true], &[0.2, 0.9]);
        assert_eq!(
            (
                c.calibration_intercept,
                c.calibration_slope,
                c.calibration_in_the_large
            ),
            (None, None, None)
        );
        let c = calibration(&[true, false, true, false], &[1.0, 0.0, 0.7, 0.6]);
        assert!(c.calibration_in_the_large.is_some_and(f64::is_finite));
    }

    #[test]
    fn bins_cover_every_patient_once_in_score_order() {
        let s: Vec<f64> = (0..23).map(|i| f64::from(i) / 23.0).collect();
        let y: Vec<bool> = (0..23).map(|i| i % 3 == 0).collect();
        let bins = calibration_bins(&y, &s, 10);
        assert_eq!(bins.len(), 10);
        assert_eq!(bins.iter().map(|b| b.n).sum::<u64>(), 23);
        assert!(bins.windows(2).all(|w| w[0].mean_predicted < w[1].mean_predicted));
    }
}
