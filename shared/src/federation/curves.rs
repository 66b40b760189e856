//! A site's calibration groups and decision curve, as it reports them beside its other metrics
//! (statistics.md, "Clinical utility"; TRIPOD-Cluster asks for calibration per cluster): the deciles of
//! predicted risk with their mean prediction and observed LNM rate, and the model's net benefit on the
//! threshold grid 0.01, 0.02, …, 0.99. Both are aggregates of at least a tenth of the site's patients
//! (a group) or of all of them (a threshold's net benefit); the score histogram they come from stays
//! at the site (it reaches the aggregator only inside its pool's secure sum).

use crate::stats::binary::net_benefit;
use crate::stats::calibration::calibration_bins;
use serde::{Deserialize, Serialize};

/// Groups of the calibration plot: deciles of predicted risk.
pub const CALIBRATION_GROUPS: usize = 10;

/// The decision curve's thresholds: 0.01, 0.02, …, 0.99.
#[must_use]
pub fn decision_thresholds() -> Vec<f64> {
    (1..100).map(|k| f64::from(k) / 100.0).collect()
}

/// One group of the calibration plot: patients of similar predicted risk.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CalibrationGroup {
    pub n: u64,
    pub mean_predicted: f64,
    pub observed_rate: f64,
}

/// A site's calibration groups and the model's net benefit at each of [`decision_thresholds`].
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SiteCurves {
    pub calibration: Vec<CalibrationGroup>,
    pub net_benefit: Vec<f64>,
}

impl SiteCurves {
    /// The curves of outcomes `y` and scores `s` (empty without patients; no calibration groups
    /// without both classes, as the pooled figures).
    #[must_use]
    pub fn of_scores(y: &[bool], s: &[f64]) -> Self {
        let both = y.contains(&true) && y.contains(&false);
        Self {
            calibration: if both {
                calibration_bins(y, s, CALIBRATION_GROUPS)
                    .into_iter()
                    .map(|bin| CalibrationGroup {
                        n: bin.n,
                        mean_predicted: bin.mean_predicted,
                        observed_rate: bin.observed_rate,
                    })
                    .collect()
            } else {
                Vec::new()
            },
            net_benefit: if y.is_empty() {
                Vec::new()
            } else {
                net_benefit(y, s, &decision_thresholds())
                    .map(|points| points.into_iter().map(|p| p.model).collect())
                    .unwrap_or_default()
            },
        }
    }

    /// Checks curves received from a site of `n_patients`: at most [`CALIBRATION_GROUPS`] groups
    /// whose sizes add up to `n_patients`, rates and predictions in [0, 1]; a net benefit per
    /// threshold (or none), each in [−99, 1] (its bounds at p_t = 0.99).
    ///
    /// # Errors
    /// The first value at fault, named.
    pub fn check(&self, n_patients: u64) -> Result<(), String> {
        if self.calibration.len() > CALIBRATION_GROUPS {
            return Err(format!(
                "{} calibration groups, more than {CALIBRATION_GROUPS}",
                self.calibration.len()
            ));
        }
        let mut total = 0_u64;
        for (k, group) in self.calibration.iter().enumerate() {
            let in_unit = |v: f64| (0.0..=1.0).contains(&v);
            if group.n == 0 || !in_unit(group.mean_predicted) || !in_unit(group.observed_rate) {
                return Err(format!(
                    "calibration group {k} ({} patients, predicted {}, observed {}) is not a group of \
                     patients with rates in [0, 1]",
                    group.n, group.mean_predicted, group.observed_rate
                ));
            }
            total = total.saturating_add(group.n);
        }
        if !self.calibration.is_empty() && total != n_patients {
            return Err(format!(
                "the calibration groups hold {total} patients, not the {n_patients} validated"
            ));
        }
        let thresholds = decision_thresholds().len();
        if !self.net_benefit.is_empty() && self.net_benefit.len() != thresholds {
            return Err(format!(
                "{} net benefits, expected one per threshold ({thresholds})",
                self.net_benefit.len()
            ));
        }
        if let Some((k, nb)) = self
            .net_benefit
            .iter()
            .enumerate()
            .find(|(_, nb)| !(-99.0..=1.0).contains(*nb))
        {
            return Err(format!(
                "net benefit {nb} at threshold {} is not in [−99, 1]",
                (k + 1) as f64 / 100.0
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn curves_of_scores_are_the_engines_and_pass_their_check() {
        let y: Vec<bool> = (0..200).map(|i| i % 3 == 0).collect();
        let s: Vec<f64> = (0..200).map(|i| f64::from(i) / 200.0).collect();
        let curves = SiteCurves::of_scores(&y, &s);
        assert_eq!(curves.calibration.len(), CALIBRATION_GROUPS);
        assert_eq!(curves.calibration.iter().map(|g| g.n).sum::<u64>(), 200);
        let engine = net_benefit(&y, &s, &decision_thresholds()).unwrap();
        assert_eq!(
            curves.net_benefit,
            engine.iter().map(|p| p.model).collect::<Vec<_>>()
        );
        curves.check(200).unwrap();
        assert!(
            curves
                .check(199)
                .unwrap_err()
                .contains("hold 200 patients, not the 199")
        );
        let mut bad = curves.clone();
        bad.net_benefit[98] = f64::NAN;
        assert!(bad.check(200).unwrap_err().contains("at threshold 0.99"));
        bad.net_benefit.pop();
        assert!(bad.check(200).unwrap_err().contains("98 net benefits"));
        let mut bad = curves;
        bad.calibration[3].observed_rate = 1.5;
        assert!(bad.check(200).unwrap_err().contains("calibration group 3"));
        assert_eq!(SiteCurves::of_scores(&[], &[]), SiteCurves::default());
    }
}
