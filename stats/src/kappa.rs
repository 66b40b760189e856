//! Ordinal agreement between predicted and pathological stage: Cohen's kappa, unweighted, linear and
//! quadratic, on a **declared** scale 0..k−1, with the Fleiss–Cohen–Everitt (1969) standard errors
//! (non-null for the CI, null for the test), as `statsmodels.stats.inter_rater.cohens_kappa`.
//!
//! κ itself is computed from integer counts and integer disagreement weights, so it is exactly
//! rounded: κ = 1 − n·Σ d_ij O_ij / Σ d_ij r_i c_j (the weight scale 1/(k−1) or 1/(k−1)² cancels).

use super::StatsError;
use super::normal::{Z_95, normal_two_sided_p};
use super::sum::sum;
use serde::Serialize;

/// How disagreement between categories i and j is weighted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Weighting {
    /// w_ij = [i = j]
    None,
    /// w_ij = 1 − |i − j|/(k − 1)
    Linear,
    /// w_ij = 1 − (i − j)²/(k − 1)²
    Quadratic,
}

impl Weighting {
    /// All three, in report order.
    pub const ALL: [Self; 3] = [Self::None, Self::Linear, Self::Quadratic];

    /// Integer disagreement weight d_ij; the agreement weight is w_ij = 1 − d_ij / d_max.
    fn disagreement(self, i: usize, j: usize) -> u128 {
        let distance = i.abs_diff(j) as u128;
        match self {
            Self::None => u128::from(i != j),
            Self::Linear => distance,
            Self::Quadratic => distance * distance,
        }
    }

    /// The largest disagreement weight on a k-point scale (k ≥ 2).
    fn max_disagreement(self, k: usize) -> u128 {
        self.disagreement(0, k - 1)
    }

    /// Agreement weight w_ij in [0, 1].
    fn agreement(self, i: usize, j: usize, k: usize) -> f64 {
        1.0 - self.disagreement(i, j) as f64 / self.max_disagreement(k) as f64
    }
}

/// κ with its standard errors and CI for one weighting.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct KappaEstimate {
    /// `None` when the expected agreement p_e is 1 (both raters constant and agreeing).
    pub kappa: Option<f64>,
    /// Large-sample non-null SE (FCE 1969).
    pub se: Option<f64>,
    /// SE under H0: κ = 0.
    pub se0: Option<f64>,
    /// κ ∓ 1.959963984540054·SE, not clipped.
    pub ci_lower: Option<f64>,
    pub ci_upper: Option<f64>,
    /// κ / SE0 and its two-sided normal p-value.
    pub z: Option<f64>,
    pub p: Option<f64>,
}

/// Everything `stats kappa` reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KappaReport {
    pub n: u64,
    pub k: usize,
    pub none: KappaEstimate,
    pub linear: KappaEstimate,
    pub quadratic: KappaEstimate,
    /// k×k counts: row = truth (pathology), column = prediction.
    pub confusion: Vec<Vec<u64>>,
}

/// κ (none, linear, quadratic) of `truth` against `predicted`, both codes on the scale 0..k−1.
pub fn cohen_kappa(truth: &[usize], predicted: &[usize], k: usize) -> Result<KappaReport, StatsError> {
    let confusion = confusion_matrix(truth, predicted, k)?;
    Ok(KappaReport {
        n: truth.len() as u64,
        k,
        none: kappa_from_confusion(&confusion, Weighting::None),
        linear: kappa_from_confusion(&confusion, Weighting::Linear),
        quadratic: kappa_from_confusion(&confusion, Weighting::Quadratic),
        confusion,
    })
}

/// The largest declared scale: its k×k tables stay a few megabytes (ordinal clinical scales have a
/// handful of categories).
pub const MAX_CATEGORIES: usize = 1000;

/// The k×k confusion matrix (row = truth, column = prediction), checking every code against the scale.
pub fn confusion_matrix(truth: &[usize], predicted: &[usize], k: usize) -> Result<Vec<Vec<u64>>, StatsError> {
    if k > MAX_CATEGORIES {
        return Err(StatsError::ScaleTooLarge {
            k,
            max: MAX_CATEGORIES,
        });
    }
    if k < 2 {
        return Err(StatsError::ScaleTooSmall { k });
    }
    if truth.len() != predicted.len() {
        return Err(StatsError::LengthMismatch {
            left_name: "truth",
            left: truth.len(),
            right_name: "predicted",
            right: predicted.len(),
        });
    }
    if truth.is_empty() {
        return Err(StatsError::Empty);
    }
    let mut confusion = vec![vec![0_u64; k]; k];
    for (row, (&t, &p)) in truth.iter().zip(predicted).enumerate() {
        for (what, value) in [("truth", t), ("prediction", p)] {
            if value >= k {
                return Err(StatsError::CodeOutOfRange { what, row, value, k });
            }
        }
        confusion[t][p] += 1;
    }
    Ok(confusion)
}

/// κ and its SEs from a k×k table of counts (k ≥ 2, total > 0) for one weighting.
#[must_use]
pub fn kappa_from_confusion(confusion: &[Vec<u64>], weighting: Weighting) -> KappaEstimate {
    let k = confusion.len();
    let row_totals: Vec<u64> = confusion.iter().map(|row| row.iter().sum()).collect();
    let col_totals: Vec<u64> = (0..k).map(|j| confusion.iter().map(|row| row[j]).sum()).collect();
    let n: u64 = row_totals.iter().sum();
    let undefined = KappaEstimate {
        kappa: None,
        se: None,
        se0: None,
        ci_lower: None,
        ci_upper: None,
        z: None,
        p: None,
    };
    if k < 2 || n == 0 {
        return undefined;
    }

    // Exact κ from integers: observed and chance-expected disagreement.
    let cells = || (0..k).flat_map(|i| (0..k).map(move |j| (i, j)));
    let observed: u128 = cells()
        .map(|(i, j)| weighting.disagreement(i, j) * u128::from(confusion[i][j]))
        .sum();
    let expected: u128 = cells()
        .map(|(i, j)| weighting.disagreement(i, j) * u128::from(row_totals[i]) * u128::from(col_totals[j]))
        .sum();
    if expected == 0 {
        return undefined;
    }
    let kappa = 1.0 - (u128::from(n) * observed) as f64 / expected as f64;

    // Standard errors in proportions, as FCE (1969) write them.
    // Sums run over counts and divide by n once, so that perfect agreement gives a variance of exactly 0.
    let n_f = n as f64;
    let count = |i: usize, j: usize| confusion[i][j] as f64;
    let p_row: Vec<f64> = row_totals.iter().map(|&r| r as f64 / n_f).collect();
    let p_col: Vec<f64> = col_totals.iter().map(|&c| c as f64 / n_f).collect();
    let w = |i: usize, j: usize| weighting.agreement(i, j, k);
    let p_e =
        sum(cells().map(|(i, j)| w(i, j) * (row_totals[i] as f64 * col_totals[j] as f64))) / (n_f * n_f);
    let w_row: Vec<f64> = (0..k).map(|i| sum((0..k).map(|j| p_col[j] * w(i, j)))).collect(); // w̄_i.
    let w_col: Vec<f64> = (0..k).map(|j| sum((0..k).map(|i| p_row[i] * w(i, j)))).collect(); // w̄_.j
    let scale = 1.0 / (n_f * (1.0 - p_e).powi(2));
    let var =
        (sum(cells().map(|(i, j)| count(i, j) * (w(i, j) - (w_row[i] + w_col[j]) * (1.0 - kappa)).powi(2)))
            / n_f
            - (kappa - p_e * (1.0 - kappa)).powi(2))
            * scale;
    let var0 = (sum(cells().map(|(i, j)| p_row[i] * p_col[j] * (w(i, j) - (w_row[i] + w_col[j])).powi(2)))
        - p_e * p_e)
        * scale;
    // Rounding can leave a variance of exactly-zero quantities a hair below 0 (perfect agreement).
    let se = var.max(0.0).sqrt();
    let se0 = var0.max(0.0).sqrt();
    let z = (se0 > 0.0).then(|| kappa / se0);
    KappaEstimate {
        kappa: Some(kappa),
        se: Some(se),
        se0: Some(se0),
        ci_lower: Some(kappa - Z_95 * se),
        ci_upper: Some(kappa + Z_95 * se),
        z,
        p: z.map(normal_two_sided_p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hand_computed_cases() {
        // (truth, predicted, k, expected unweighted κ)
        type Case = (&'static [usize], &'static [usize], usize, Option<f64>);
        let cases: &[Case] = &[
            (&[0, 1, 2, 0, 1, 2], &[0, 1, 2, 0, 1, 2], 3, Some(1.0)),
            // 2×2 table [[2,1],[1,2]]: p_o = 4/6, p_e = 1/2, κ = 1/3.
            (&[0, 0, 0, 1, 1, 1], &[0, 0, 1, 0, 1, 1], 2, Some(1.0 / 3.0)),
            // Both raters constant and agreeing: p_e = 1, κ undefined.
            (&[1, 1, 1], &[1, 1, 1], 4, None),
            // Constant ratings that disagree: p_o = p_e = 0, κ = 0.
            (&[0, 0], &[1, 1], 2, Some(0.0)),
        ];
        for &(truth, predicted, k, expected) in cases {
            let report = cohen_kappa(truth, predicted, k).unwrap();
            match (report.none.kappa, expected) {
                (Some(a), Some(e)) => assert!((a - e).abs() < 1e-15, "{truth:?} {predicted:?}: {a} vs {e}"),
                (a, e) => assert_eq!(a, e, "{truth:?} {predicted:?}"),
            }
        }
    }

    #[test]
    fn declared_scale_keeps_distances_of_unused_categories() {
        // Ratings on {0, 1, 3} of a 4-point scale, and the same ratings squeezed onto {0, 1, 2} (what
        // sklearn does without `labels`): the distance 1→3 is 2 on the declared scale, 1 once squeezed.
        let (truth, predicted) = ([0, 1, 3, 3, 1, 0, 3], [1, 1, 3, 0, 0, 0, 1]);
        let squeeze = |codes: &[usize]| {
            codes
                .iter()
                .map(|&c| if c == 3 { 2 } else { c })
                .collect::<Vec<_>>()
        };
        let declared = cohen_kappa(&truth, &predicted, 4).unwrap();
        let squeezed = cohen_kappa(&squeeze(&truth), &squeeze(&predicted), 3).unwrap();
        assert_eq!(declared.confusion.len(), 4);
        assert_ne!(declared.linear.kappa, squeezed.linear.kappa);
        assert_ne!(declared.quadratic.kappa, squeezed.quadratic.kappa);
        assert_eq!(
            declared.none.kappa, squeezed.none.kappa,
            "unweighted κ ignores distances"
        );
        // Unused categories beyond the last used one change no distance between used ones.
        let wider = cohen_kappa(&truth, &predicted, 6).unwrap();
        assert_eq!(wider.quadratic.kappa, declared.quadratic.kappa);
    }

    #[test]
    fn out_of_scale_codes_are_named() {
        assert_eq!(
            cohen_kappa(&[0, 3], &[0, 1], 3),
            Err(StatsError::CodeOutOfRange {
                what: "truth",
                row: 1,
                value: 3,
                k: 3
            })
        );
        assert_eq!(
            cohen_kappa(&[0], &[0], 1),
            Err(StatsError::ScaleTooSmall { k: 1 })
        );
        assert_eq!(cohen_kappa(&[], &[], 3), Err(StatsError::Empty));
    }

    proptest! {
        #[test]
        fn kappa_is_one_on_identical_non_constant_ratings(codes in prop::collection::vec(0_usize..5, 2..40)) {
            prop_assume!(codes.iter().any(|&c| c != codes[0]));
            let report = cohen_kappa(&codes, &codes, 5).unwrap();
            for estimate in [report.none, report.linear, report.quadratic] {
                prop_assert_eq!(estimate.kappa, Some(1.0));
                prop_assert_eq!(estimate.se, Some(0.0));
            }
        }

        #[test]
        fn kappa_is_symmetric_in_the_raters(pairs in prop::collection::vec((0_usize..4, 0_usize..4), 2..40)) {
            let (a, b): (Vec<usize>, Vec<usize>) = pairs.into_iter().unzip();
            let ab = cohen_kappa(&a, &b, 4).unwrap();
            let ba = cohen_kappa(&b, &a, 4).unwrap();
            for (x, y) in [(ab.none, ba.none), (ab.linear, ba.linear), (ab.quadratic, ba.quadratic)] {
                prop_assert_eq!(x.kappa, y.kappa);
            }
        }
    }
}
