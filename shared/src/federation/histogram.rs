//! Class-conditional histograms of LNM scores on a fixed grid of [0, 1]: what a site sends instead of
//! patient-level scores so that the aggregator can compute a pooled AUC (and ROC curve) across sites.
//!
//! Bin i holds the scores in [i/B, (i+1)/B) (the last bin also holds 1.0). The pooled AUC is the exact
//! AUC (ties counted one half, DeLong CI) of the *binned* scores, computed by the statistics engine on
//! the expanded bin indices: with B = 10,000 it differs from the AUC of the raw scores only through
//! pairs of opposite classes whose scores fall within 10⁻⁴ of each other.

use crate::stats::StatsError;
use crate::stats::binary::{self, AucEstimate, RocPoint};
use serde::{Deserialize, Serialize};

/// The grid of the study: 10,000 bins.
pub const HISTOGRAM_BINS: usize = 10_000;

/// A histogram that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HistogramError {
    #[error("histogram has {positive} positive and {negative} negative bins; expected {expected} of each")]
    WrongBins {
        positive: usize,
        negative: usize,
        expected: usize,
    },
    #[error("score {0} is not a probability in [0, 1]")]
    BadScore(f64),
}

/// Counts of LNM-positive and LNM-negative patients per score bin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScoreHistogram {
    pub positive: Vec<u64>,
    pub negative: Vec<u64>,
}

impl ScoreHistogram {
    /// An empty histogram on the study's grid.
    #[must_use]
    pub fn empty() -> Self {
        Self {
            positive: vec![0; HISTOGRAM_BINS],
            negative: vec![0; HISTOGRAM_BINS],
        }
    }

    /// The bin of a probability.
    #[must_use]
    pub fn bin_of(score: f64) -> usize {
        // score ∈ [0, 1] (checked by callers), so the product is in [0, B] and the cast exact enough.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let bin = (score * HISTOGRAM_BINS as f64).floor() as usize;
        bin.min(HISTOGRAM_BINS - 1)
    }

    /// The histogram of labelled scores.
    ///
    /// # Errors
    /// A score outside [0, 1] (or NaN).
    pub fn from_scores(y: &[bool], scores: &[f64]) -> Result<Self, HistogramError> {
        let mut histogram = Self::empty();
        for (&label, &score) in y.iter().zip(scores) {
            if !(0.0..=1.0).contains(&score) {
                return Err(HistogramError::BadScore(score));
            }
            let counts = if label {
                &mut histogram.positive
            } else {
                &mut histogram.negative
            };
            counts[Self::bin_of(score)] += 1;
        }
        Ok(histogram)
    }

    /// Checks the grid (a histogram from the network is checked before use).
    ///
    /// # Errors
    /// [`HistogramError::WrongBins`].
    pub fn check(&self) -> Result<(), HistogramError> {
        if self.positive.len() == HISTOGRAM_BINS && self.negative.len() == HISTOGRAM_BINS {
            Ok(())
        } else {
            Err(HistogramError::WrongBins {
                positive: self.positive.len(),
                negative: self.negative.len(),
                expected: HISTOGRAM_BINS,
            })
        }
    }

    /// Adds another site's counts.
    ///
    /// # Errors
    /// Either histogram not on the study's grid.
    pub fn merge(&mut self, other: &Self) -> Result<(), HistogramError> {
        self.check()?;
        other.check()?;
        for (a, b) in self.positive.iter_mut().zip(&other.positive) {
            *a = a.saturating_add(*b);
        }
        for (a, b) in self.negative.iter_mut().zip(&other.negative) {
            *a = a.saturating_add(*b);
        }
        Ok(())
    }

    #[must_use]
    pub fn n_positive(&self) -> u64 {
        // Saturating: the counts may come from another party (checked against the report after).
        self.positive
            .iter()
            .fold(0, |sum, &count| sum.saturating_add(count))
    }

    #[must_use]
    pub fn n_negative(&self) -> u64 {
        self.negative
            .iter()
            .fold(0, |sum, &count| sum.saturating_add(count))
    }

    /// Labels and bin-centre scores, one per patient (the histogram as rows): what the pooled
    /// figures (ROC, calibration groups, decision curve) are computed from. A decision threshold on
    /// the grid (k/100) falls between bins, so counts at those thresholds are exact.
    #[must_use]
    pub fn rows(&self) -> (Vec<bool>, Vec<f64>) {
        let n = usize::try_from(self.n_positive() + self.n_negative()).unwrap_or(usize::MAX);
        let (mut y, mut s) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for (label, counts) in [(true, &self.positive), (false, &self.negative)] {
            for (bin, &count) in counts.iter().enumerate() {
                let centre = (bin as f64 + 0.5) / counts.len().max(1) as f64;
                for _ in 0..count {
                    y.push(label);
                    s.push(centre);
                }
            }
        }
        (y, s)
    }

    /// AUC of the binned scores with its DeLong CI; `None` without both classes.
    ///
    /// # Errors
    /// Only if the statistics engine rejects the rows (it cannot for a well-formed histogram).
    pub fn auc(&self) -> Result<Option<AucEstimate>, StatsError> {
        let (y, s) = self.rows();
        binary::auc_delong(&y, &s)
    }

    /// The ROC curve of the binned scores (thresholds at bin centres).
    ///
    /// # Errors
    /// As [`Self::auc`]; also without both classes.
    pub fn roc(&self) -> Result<Vec<RocPoint>, StatsError> {
        let (y, s) = self.rows();
        binary::roc_curve(&y, &s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn bins_cover_the_unit_interval() {
        assert_eq!(ScoreHistogram::bin_of(0.0), 0);
        assert_eq!(ScoreHistogram::bin_of(0.99995), HISTOGRAM_BINS - 1);
        assert_eq!(ScoreHistogram::bin_of(1.0), HISTOGRAM_BINS - 1);
        assert_eq!(ScoreHistogram::bin_of(0.5), HISTOGRAM_BINS / 2);
        assert!(ScoreHistogram::from_scores(&[true], &[1.5]).is_err());
        assert!(ScoreHistogram::from_scores(&[true], &[f64::NAN]).is_err());
    }

    #[test]
    fn a_malformed_histogram_is_refused_by_merge() {
        let mut good = ScoreHistogram::empty();
        let bad = ScoreHistogram {
            positive: vec![1; 10],
            negative: vec![1; 10],
        };
        assert_eq!(
            good.merge(&bad),
            Err(HistogramError::WrongBins {
                positive: 10,
                negative: 10,
                expected: HISTOGRAM_BINS
            })
        );
        assert_eq!(good, ScoreHistogram::empty());
    }

    proptest! {
        /// Scores already on the grid lose nothing: the pooled AUC of merged site histograms equals the
        /// exact AUC (and DeLong CI) of all sites' raw scores.
        #[test]
        fn pooled_auc_of_grid_scores_equals_the_exact_pooled_auc(
            sites in prop::collection::vec(
                prop::collection::vec((any::<bool>(), 0usize..HISTOGRAM_BINS), 2..60), 1..5)
        ) {
            let mut pooled = ScoreHistogram::empty();
            let (mut y, mut s) = (Vec::new(), Vec::new());
            for rows in &sites {
                let ys: Vec<bool> = rows.iter().map(|r| r.0).collect();
                let ss: Vec<f64> = rows.iter().map(|r| (r.1 as f64 + 0.5) / HISTOGRAM_BINS as f64).collect();
                pooled.merge(&ScoreHistogram::from_scores(&ys, &ss).unwrap()).unwrap();
                y.extend(ys);
                s.extend(ss);
            }
            let exact = binary::auc_delong(&y, &s).unwrap();
            let binned = pooled.auc().unwrap();
            prop_assert_eq!(exact.map(|e| e.auc), binned.map(|e| e.auc));
            prop_assert_eq!(exact.and_then(|e| e.variance), binned.and_then(|e| e.variance));
        }

        /// Raw scores: the binned AUC is within the mass of cross-class pairs sharing a bin.
        #[test]
        fn binned_auc_is_close_to_the_raw_auc(rows in prop::collection::vec((any::<bool>(), 0.0f64..=1.0), 4..300)) {
            let y: Vec<bool> = rows.iter().map(|r| r.0).collect();
            let s: Vec<f64> = rows.iter().map(|r| r.1).collect();
            let exact = binary::auc_delong(&y, &s).unwrap();
            let histogram = ScoreHistogram::from_scores(&y, &s).unwrap();
            let binned = histogram.auc().unwrap();
            if let (Some(exact), Some(binned)) = (exact, binned) {
                let shared_pairs: u64 = histogram.positive.iter().zip(&histogram.negative).map(|(p, n)| p * n).sum();
                let bound = 0.5 * shared_pairs as f64 / (histogram.n_positive() * histogram.n_negative()) as f64;
                prop_assert!((exact.auc - binned.auc).abs() <= bound + 1e-12);
            }
        }
    }
}
