//! Binary-outcome metrics (lymph node metastasis yes/no against a score in [0, 1]): AUC with its
//! DeLong variance and CI, the Youden-optimal threshold, average precision, Brier score, 2×2 tables
//! with PPV/NPV and Wilson intervals, ROC points, the paired DeLong test and decision-curve net benefit.
//!
//! Every definition is the one of `statistics.md`. AUC and DeLong are O(n log n): one radix sort of
//! the packed (score, class) keys into tie groups (`ties`), then walks of the groups, which give the
//! midrank quantities of Sun & Xu (2014) directly (T_Z − T_X for a positive = negatives below + ½
//! negatives tied); no pair loop. Integer quantities (win counts, the DeLong sums of squares, confusion
//! counts, Youden's criterion) are exact integers until the final divisions.

use super::StatsError;
use super::calibration::{self, Calibration};
use super::normal::{Z_95, normal_two_sided_p, wilson_interval};
use super::parallel::{compensated_sum, map_blocks, map_indices};
#[cfg(test)]
use super::sum::sample_variance;
use super::sum::{CompensatedSum, sample_covariance};
use super::ties::{GroupBlocks, SortedKeys, TieGroups, check_lengths};
use serde::Serialize;

/// Everything `stats binary` reports for one set of rows (one site, or pooled).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BinaryMetrics {
    pub n: u64,
    pub n_pos: u64,
    pub n_neg: u64,
    /// mean(y): the pathologically confirmed LNM rate.
    pub lnm_rate: f64,
    /// Wilson 95% interval of `lnm_rate`.
    pub lnm_rate_ci: (f64, f64),
    pub auc: Option<f64>,
    pub auc_var: Option<f64>,
    pub auc_ci_lower: Option<f64>,
    pub auc_ci_upper: Option<f64>,
    pub youden_threshold: Option<f64>,
    pub youden_sensitivity: Option<f64>,
    pub youden_specificity: Option<f64>,
    pub youden_accuracy: Option<f64>,
    pub youden_j: Option<f64>,
    pub average_precision: Option<f64>,
    pub brier: f64,
    #[serde(rename = "sensitivity_at_0.5")]
    pub sensitivity_at_half: Option<f64>,
    #[serde(rename = "specificity_at_0.5")]
    pub specificity_at_half: Option<f64>,
    #[serde(rename = "accuracy_at_0.5")]
    pub accuracy_at_half: f64,
    /// The 2×2 table at the Youden threshold (absent when the threshold is undefined).
    pub youden_table: Option<ConfusionTable>,
    /// The 2×2 table at the fixed threshold 0.5.
    pub table_at_half: ConfusionTable,
    /// Calibration intercept and slope (logistic recalibration of logit(s)), calibration-in-the-large.
    #[serde(flatten)]
    pub calibration: Calibration,
}

/// A 2×2 table at a threshold (predict positive iff score ≥ threshold) with the proportions clinical
/// readers expect, each with its Wilson 95% interval. A proportion with a zero denominator is `None`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConfusionTable {
    pub threshold: f64,
    pub tp: u64,
    pub fp: u64,
    pub tn: u64,
    #[serde(rename = "fn")]
    pub fn_: u64,
    pub sensitivity: Option<Proportion>,
    pub specificity: Option<Proportion>,
    pub ppv: Option<Proportion>,
    pub npv: Option<Proportion>,
    pub accuracy: Option<Proportion>,
}

/// A proportion k/n with its Wilson score 95% interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Proportion {
    pub value: f64,
    pub ci_lower: f64,
    pub ci_upper: f64,
}

/// AUC with its DeLong variance (Sun & Xu midrank algorithm) and the clipped 95% CI.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct AucEstimate {
    pub auc: f64,
    /// `None` with fewer than two positives or two negatives.
    pub variance: Option<f64>,
    pub ci_lower: Option<f64>,
    pub ci_upper: Option<f64>,
}

/// One point of the ROC curve: predict positive iff score ≥ `threshold`. The first point (0, 0) has
/// threshold +∞, reported as `None` (JSON null), as in `sklearn.metrics.roc_curve(drop_intermediate=False)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RocPoint {
    pub threshold: Option<f64>,
    pub fpr: f64,
    pub tpr: f64,
}

/// The paired DeLong test of two scores on the same patients (H0: equal AUCs).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PairedDelong {
    pub auc_a: f64,
    pub auc_b: f64,
    /// AUC(a) − AUC(b).
    pub delta: f64,
    /// SE of the difference from the DeLong covariance; `None` with fewer than two per class.
    pub se: Option<f64>,
    /// `None` when the SE is undefined or zero.
    pub z: Option<f64>,
    pub p: Option<f64>,
    pub ci_lower: Option<f64>,
    pub ci_upper: Option<f64>,
    /// Correlation of the two AUC estimates (DeLong covariance / product of SDs).
    pub correlation: Option<f64>,
}

/// Net benefit of treating patients whose score ≥ t (decision-curve analysis, Vickers & Elkin 2006):
/// NB = TP/n − FP/n · t/(1 − t), beside "treat all" (π − (1 − π)·t/(1 − t)); "treat none" is 0.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct NetBenefit {
    pub threshold: f64,
    pub model: f64,
    pub treat_all: f64,
}

/// All binary metrics of `statistics.md` for outcomes `y` and scores `s`.
pub fn binary_metrics(y: &[bool], s: &[f64]) -> Result<BinaryMetrics, StatsError> {
    let sorted = TieGroups::new(y, s)?;
    let (p, n) = (sorted.n_pos, sorted.n_neg);
    let total = p + n;
    let auc = auc(&sorted);
    let youden = sorted.youden_table();
    let youden_rate =
        |table: &ConfusionTable, f: fn(&ConfusionTable) -> Option<Proportion>| f(table).map(|x| x.value);
    let table_at_half = sorted.table_at(0.5);
    Ok(BinaryMetrics {
        n: total,
        n_pos: p,
        n_neg: n,
        lnm_rate: p as f64 / total as f64,
        // total > 0 was checked by TieGroups::new.
        lnm_rate_ci: wilson_interval(p, total).unwrap_or((0.0, 1.0)),
        auc: auc.map(|a| a.auc),
        auc_var: auc.and_then(|a| a.variance),
        auc_ci_lower: auc.and_then(|a| a.ci_lower),
        auc_ci_upper: auc.and_then(|a| a.ci_upper),
        youden_threshold: youden.as_ref().map(|t| t.threshold),
        youden_sensitivity: youden.as_ref().and_then(|t| youden_rate(t, |t| t.sensitivity)),
        youden_specificity: youden.as_ref().and_then(|t| youden_rate(t, |t| t.specificity)),
        youden_accuracy: youden.as_ref().and_then(|t| youden_rate(t, |t| t.accuracy)),
        youden_j: youden
            .as_ref()
            .map(|t| t.tp as f64 / p as f64 + t.tn as f64 / n as f64 - 1.0),
        average_precision: sorted.average_precision(),
        brier: sorted.brier(),
        sensitivity_at_half: table_at_half.sensitivity.map(|x| x.value),
        specificity_at_half: table_at_half.specificity.map(|x| x.value),
        // total > 0, so accuracy is defined.
        accuracy_at_half: table_at_half.accuracy.map_or(0.0, |x| x.value),
        youden_table: youden,
        table_at_half,
        calibration: calibration::of_groups(&sorted),
    })
}

/// AUC (Mann–Whitney, ties counted ½) with the DeLong variance and clipped CI; `None` when only one
/// class is present.
pub fn auc_delong(y: &[bool], s: &[f64]) -> Result<Option<AucEstimate>, StatsError> {
    Ok(auc(&SortedKeys::new(y, s)?))
}

/// ROC curve points at every distinct score, from (0, 0) to (1, 1).
pub fn roc_curve(y: &[bool], s: &[f64]) -> Result<Vec<RocPoint>, StatsError> {
    let sorted = TieGroups::new(y, s)?;
    let (p, n) = (sorted.n_pos as f64, sorted.n_neg as f64);
    let rate = |count: u64, of: f64| if of > 0.0 { count as f64 / of } else { f64::NAN };
    let mut points = vec![RocPoint {
        threshold: None,
        fpr: 0.0,
        tpr: 0.0,
    }];
    points.extend(
        sorted
            .cumulative_at_distinct_scores()
            .map(|(t, tp, fp)| RocPoint {
                threshold: Some(t),
                fpr: rate(fp, n),
                tpr: rate(tp, p),
            }),
    );
    Ok(points)
}

/// The paired DeLong test comparing two scores on the same patients.
pub fn paired_delong(
    y: &[bool],
    score_a: &[f64],
    score_b: &[f64],
) -> Result<Option<PairedDelong>, StatsError> {
    check_lengths("score_a", score_a.len(), "score_b", score_b.len())?;
    let (a, b) = (TieGroups::new(y, score_a)?, TieGroups::new(y, score_b)?);
    let (Some(auc_a), Some(auc_b)) = (auc(&a), auc(&b)) else {
        return Ok(None);
    };
    let (va10, va01) = a.placements(y, score_a);
    let (vb10, vb01) = b.placements(y, score_b);
    let (m, n) = (a.n_pos as f64, a.n_neg as f64);
    let covariance = |x10: &[f64], x01: &[f64], z10: &[f64], z01: &[f64]| -> Option<f64> {
        Some(sample_covariance(x10, z10)? / m + sample_covariance(x01, z01)? / n)
    };
    let var_a = covariance(&va10, &va01, &va10, &va01);
    let var_b = covariance(&vb10, &vb01, &vb10, &vb01);
    let cov_ab = covariance(&va10, &va01, &vb10, &vb01);
    let delta = auc_a.auc - auc_b.auc;
    let (se, correlation) = match (var_a, var_b, cov_ab) {
        (Some(va), Some(vb), Some(cab)) => {
            let var_delta = (va + vb - 2.0 * cab).max(0.0);
            let sd_product = (va * vb).sqrt();
            (
                Some(var_delta.sqrt()),
                (sd_product > 0.0).then(|| cab / sd_product),
            )
        }
        _ => (None, None),
    };
    let z = se.filter(|&se| se > 0.0).map(|se| delta / se);
    Ok(Some(PairedDelong {
        auc_a: auc_a.auc,
        auc_b: auc_b.auc,
        delta,
        se,
        z,
        p: z.map(normal_two_sided_p),
        ci_lower: se.map(|se| delta - Z_95 * se),
        ci_upper: se.map(|se| delta + Z_95 * se),
        correlation,
    }))
}

/// Decision-curve net benefit at each threshold in (0, 1).
pub fn net_benefit(y: &[bool], s: &[f64], thresholds: &[f64]) -> Result<Vec<NetBenefit>, StatsError> {
    let sorted = TieGroups::new(y, s)?;
    let total = (sorted.n_pos + sorted.n_neg) as f64;
    let prevalence = sorted.n_pos as f64 / total;
    Ok(thresholds
        .iter()
        .filter(|t| **t > 0.0 && **t < 1.0)
        .map(|&t| {
            let table = sorted.table_at(t);
            let odds = t / (1.0 - t);
            NetBenefit {
                threshold: t,
                model: table.tp as f64 / total - table.fp as f64 / total * odds,
                treat_all: treat_all_net_benefit(prevalence, t),
            }
        })
        .collect())
}

/// The net benefit of treating everyone at threshold probability `threshold` (statistics.md, "Clinical
/// utility"): prevalence − (1 − prevalence)·p_t/(1 − p_t).
#[must_use]
pub fn treat_all_net_benefit(prevalence: f64, threshold: f64) -> f64 {
    prevalence - (1.0 - prevalence) * (threshold / (1.0 - threshold))
}

/// AUC = Σ over positives of (negatives below + ½ negatives tied) / (m·n), with its DeLong variance,
/// as one walk over the tie groups (of the sorted keys, or built), block by block on the machine's
/// cores; `None` when only one class is present. A positive's DeLong placement V10 is the share of
/// negatives below its score (ties count ½), the same for its whole tie group: no index permutation,
/// no pair loop. The sums are exact integers (doubled), so that the only rounding is the final
/// divisions.
fn auc(groups: &impl GroupBlocks) -> Option<AucEstimate> {
    let (n_pos, n_neg) = (groups.n_pos(), groups.n_neg());
    if n_pos == 0 || n_neg == 0 {
        return None;
    }
    let sums = placement_sums(groups);
    let (m, n) = (u128::from(n_pos), u128::from(n_neg));
    let auc = sums.doubled_wins as f64 / (2 * m * n) as f64;
    let variance = if n_pos < 2 || n_neg < 2 {
        None
    } else if let Some((squares10, squares01)) = sums.squares {
        // DeLong (Sun & Xu 2014): Var = S10/m + S01/n over the placements V10 (positives) and V01
        // (negatives). Both placement means equal the AUC exactly, so (m−1)·S10 = Σ (V10 − AUC)² =
        // (m·Σ k10² − W²) / (4n²m), an exact integer over an exact integer, and likewise S01 with m
        // and n swapped; both differences are ≥ 0 (Cauchy–Schwarz), exactly.
        let w2 = sums.doubled_wins * sums.doubled_wins;
        let (spread10, spread01) = (m * squares10 - w2, n * squares01 - w2);
        let scale = (2 * m * n) as f64;
        Some((spread10 as f64 / (m - 1) as f64 + spread01 as f64 / (n - 1) as f64) / (scale * scale))
    } else {
        Some(delong_variance_in_floats(groups, auc))
    };
    let half_width = variance.map(|v| Z_95 * v.sqrt());
    Some(AucEstimate {
        auc,
        variance,
        ci_lower: half_width.map(|h| (auc - h).clamp(0.0, 1.0)),
        ci_upper: half_width.map(|h| (auc + h).clamp(0.0, 1.0)),
    })
}

/// With k10 = 2·(negatives below) + negatives tied for a positive (2n·V10) and k01 = 2·(positives
/// above) + positives tied for a negative (2m·V01): the doubled wins W = Σ k10 = Σ k01 and the sums
/// of squares Σ k10², Σ k01². They fit in u128 whenever 2mn < 2^64 (each square at most (2mn)²);
/// `squares` is `None` otherwise.
fn placement_sums(groups: &impl GroupBlocks) -> PlacementSums {
    let (m, n) = (groups.n_pos(), groups.n_neg());
    let exact_squares = 2 * u128::from(m) * u128::from(n) <= u128::from(u64::MAX);
    // Integer sums: any order of the blocks gives the same totals. k10 ≤ 2n and k01 ≤ 2m fit in
    // u64 (a slice holds at most isize::MAX rows), their squares in u128.
    let blocks = map_indices(groups.block_count(), |b| {
        let (mut doubled_wins, mut squares10, mut squares01) = (0_u128, 0_u128, 0_u128);
        for g in groups.groups_of_block(b) {
            let k10 = 2 * g.negatives_below + g.negatives;
            doubled_wins += u128::from(g.positives) * u128::from(k10);
            if exact_squares {
                let k01 = 2 * (m - g.positives_below - g.positives) + g.positives;
                squares10 += u128::from(g.positives) * (u128::from(k10) * u128::from(k10));
                squares01 += u128::from(g.negatives) * (u128::from(k01) * u128::from(k01));
            }
        }
        [doubled_wins, squares10, squares01]
    });
    let [doubled_wins, squares10, squares01] = blocks.iter().fold([0; 3], |total, block| {
        [total[0] + block[0], total[1] + block[1], total[2] + block[2]]
    });
    PlacementSums {
        doubled_wins,
        squares: exact_squares.then_some((squares10, squares01)),
    }
}

/// The DeLong variance for classes too large for [`placement_sums`]' integers: one compensated pass
/// over the squared deviations of the placements from the AUC.
fn delong_variance_in_floats(groups: &impl GroupBlocks, auc: f64) -> f64 {
    let (m, n) = (groups.n_pos() as f64, groups.n_neg() as f64);
    let (mut squares10, mut squares01) = (CompensatedSum::default(), CompensatedSum::default());
    for g in (0..groups.block_count()).flat_map(|b| groups.groups_of_block(b)) {
        let (positives, negatives) = (g.positives as f64, g.negatives as f64);
        let v10 = (g.negatives_below as f64 + 0.5 * negatives) / n;
        let positives_above = (groups.n_pos() - g.positives_below - g.positives) as f64;
        let v01 = (positives_above + 0.5 * positives) / m;
        squares10.add(positives * (v10 - auc).powi(2));
        squares01.add(negatives * (v01 - auc).powi(2));
    }
    squares10.total() / (m - 1.0) / m + squares01.total() / (n - 1.0) / n
}

/// The other metrics as walks over the tie groups ([`TieGroups`]) or binary searches in them.
impl TieGroups {
    /// V10 of a positive scoring in group g: negatives below plus half the negatives tied, over n.
    fn v10(&self, g: usize) -> f64 {
        (self.negatives_below(g) as f64 + 0.5 * self.negatives(g) as f64) / self.n_neg as f64
    }

    /// V01 of a negative scoring in group g: positives above plus half the positives tied, over m.
    fn v01(&self, g: usize) -> f64 {
        let positives_above = self.n_pos - self.positives_below(g + 1);
        (positives_above as f64 + 0.5 * self.positives(g) as f64) / self.n_pos as f64
    }

    /// DeLong placements of every patient, in input order (the paired test needs patients aligned):
    /// V10 for each positive, V01 for each negative.
    fn placements(&self, y: &[bool], s: &[f64]) -> (Vec<f64>, Vec<f64>) {
        // Every observed score has its group, so the index is in range; `min` only guards the bound.
        let group_of = |score: f64| self.first_at_or_above(score).min(self.len() - 1);
        let mut v10 = Vec::with_capacity(y.len());
        let mut v01 = Vec::with_capacity(y.len());
        for (&yi, &si) in y.iter().zip(s) {
            if yi {
                v10.push(self.v10(group_of(si)));
            } else {
                v01.push(self.v01(group_of(si)));
            }
        }
        (v10, v01)
    }

    /// (threshold, TP, FP) at every distinct score, from the largest down: predict positive iff s ≥ t.
    fn cumulative_at_distinct_scores(&self) -> impl Iterator<Item = (f64, u64, u64)> + '_ {
        (0..self.len()).rev().map(|g| {
            (
                self.score(g),
                self.n_pos - self.positives_below(g),
                self.n_neg - self.negatives_below(g),
            )
        })
    }

    /// The Youden-optimal threshold: maximise TP·N + TN·P exactly (integers), the largest threshold
    /// winning ties; `None` when only one class is present.
    fn youden_table(&self) -> Option<ConfusionTable> {
        if self.n_pos == 0 || self.n_neg == 0 {
            return None;
        }
        let (p, n) = (u128::from(self.n_pos), u128::from(self.n_neg));
        // Per block, then over the blocks: the thresholds arrive smallest first, so `>=` keeps the
        // largest among ties.
        let keep_larger = |best: (u128, usize), candidate: (u128, usize)| {
            if candidate.0 >= best.0 { candidate } else { best }
        };
        let blocks = map_blocks(self.len(), |groups| {
            groups
                .map(|g| {
                    // At threshold scores[g]: TP = positives at or above it, TN = negatives below it.
                    let tp = p - u128::from(self.positives_below(g));
                    (tp * n + u128::from(self.negatives_below(g)) * p, g)
                })
                .fold((0, 0), keep_larger)
        });
        let best = blocks.into_iter().fold((0, 0), keep_larger);
        Some(self.table_at(self.score(best.1)))
    }

    /// The 2×2 table at `threshold`: a binary search, then the counts at and above it.
    fn table_at(&self, threshold: f64) -> ConfusionTable {
        let first_at_or_above = self.first_at_or_above(threshold);
        let tp = self.n_pos - self.positives_below(first_at_or_above);
        let fp = self.n_neg - self.negatives_below(first_at_or_above);
        let (fn_, tn) = (self.n_pos - tp, self.n_neg - fp);
        ConfusionTable {
            threshold,
            tp,
            fp,
            tn,
            fn_,
            sensitivity: proportion(tp, self.n_pos),
            specificity: proportion(tn, self.n_neg),
            ppv: proportion(tp, tp + fp),
            npv: proportion(tn, tn + fn_),
            accuracy: proportion(tp + tn, self.n_pos + self.n_neg),
        }
    }

    /// mean((s − y)²): each group's squared errors, (1 − s)² for its positives and s² for its
    /// negatives, weighted by their counts.
    fn brier(&self) -> f64 {
        let squared_errors = compensated_sum(self.len(), |g| {
            let score = self.score(g);
            self.positives(g) as f64 * (1.0 - score).powi(2) + self.negatives(g) as f64 * score.powi(2)
        });
        squared_errors / (self.n_pos + self.n_neg) as f64
    }

    /// `sklearn.metrics.average_precision_score`: Σ (R_k − R_{k−1})·P_k over distinct thresholds,
    /// step-wise; `None` without positives.
    fn average_precision(&self) -> Option<f64> {
        if self.n_pos == 0 {
            return None;
        }
        let p = self.n_pos as f64;
        Some(compensated_sum(self.len(), |g| {
            let tp = self.n_pos - self.positives_below(g);
            let fp = self.n_neg - self.negatives_below(g);
            self.positives(g) as f64 / p * (tp as f64 / (tp + fp) as f64)
        }))
    }
}

/// The integer sums of [`placement_sums`].
struct PlacementSums {
    /// W = 2mn·AUC.
    doubled_wins: u128,
    /// (Σ k10², Σ k01²), `None` where they could overflow.
    squares: Option<(u128, u128)>,
}

fn proportion(k: u64, n: u64) -> Option<Proportion> {
    let (ci_lower, ci_upper) = wilson_interval(k, n)?;
    Some(Proportion {
        value: k as f64 / n as f64,
        ci_lower,
        ci_upper,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The O(m·n) definition: P(s+ > s−) + ½·P(s+ = s−).
    fn auc_by_pairs(y: &[bool], s: &[f64]) -> f64 {
        let (mut wins, mut pairs) = (0.0, 0.0);
        for (i, &yi) in y.iter().enumerate() {
            for (j, &yj) in y.iter().enumerate() {
                if yi && !yj {
                    pairs += 1.0;
                    if s[i] > s[j] {
                        wins += 1.0;
                    } else if s[i] == s[j] {
                        wins += 0.5;
                    }
                }
            }
        }
        wins / pairs
    }

    /// DeLong (1988) by its O(m·n) structural components ψ(X_i, Y_j).
    fn delong_variance_by_pairs(y: &[bool], s: &[f64]) -> f64 {
        let pos: Vec<f64> = y.iter().zip(s).filter(|(y, _)| **y).map(|(_, s)| *s).collect();
        let neg: Vec<f64> = y.iter().zip(s).filter(|(y, _)| !**y).map(|(_, s)| *s).collect();
        let psi = |x: f64, y: f64| {
            if x > y {
                1.0
            } else if x == y {
                0.5
            } else {
                0.0
            }
        };
        let v10: Vec<f64> = pos
            .iter()
            .map(|&x| neg.iter().map(|&yv| psi(x, yv)).sum::<f64>() / neg.len() as f64)
            .collect();
        let v01: Vec<f64> = neg
            .iter()
            .map(|&yv| pos.iter().map(|&x| psi(x, yv)).sum::<f64>() / pos.len() as f64)
            .collect();
        sample_variance(&v10).unwrap() / pos.len() as f64 + sample_variance(&v01).unwrap() / neg.len() as f64
    }

    fn labelled(rows: &[(u8, f64)]) -> (Vec<bool>, Vec<f64>) {
        rows.iter().map(|&(y, s)| (y == 1, s)).unzip()
    }

    #[test]
    fn hand_computed_cases() {
        struct Case {
            name: &'static str,
            rows: &'static [(u8, f64)],
            auc: Option<f64>,
            youden_threshold: Option<f64>,
        }
        let cases = [
            Case {
                name: "perfect",
                rows: &[(0, 0.1), (0, 0.2), (1, 0.8), (1, 0.9)],
                auc: Some(1.0),
                youden_threshold: Some(0.8),
            },
            // Every threshold has J <= 0; predicting all positive (t = 0.1) reaches J = 0.
            Case {
                name: "reversed",
                rows: &[(1, 0.1), (1, 0.2), (0, 0.8), (0, 0.9)],
                auc: Some(0.0),
                youden_threshold: Some(0.1),
            },
            Case {
                name: "all tied",
                rows: &[(1, 0.5), (0, 0.5), (1, 0.5), (0, 0.5)],
                auc: Some(0.5),
                youden_threshold: Some(0.5),
            },
            Case {
                name: "one class",
                rows: &[(1, 0.3), (1, 0.7)],
                auc: None,
                youden_threshold: None,
            },
            // J at 0.6 is 1/2 + 1 − 1 = 0.5; at 0.4 it is 1 + 1/2 − 1 = 0.5: the largest threshold wins.
            Case {
                name: "youden tie",
                rows: &[(0, 0.2), (1, 0.4), (0, 0.5), (1, 0.6)],
                auc: Some(0.75),
                youden_threshold: Some(0.6),
            },
        ];
        for case in cases {
            let (y, s) = labelled(case.rows);
            let metrics = binary_metrics(&y, &s).unwrap();
            assert_eq!(metrics.auc, case.auc, "{}", case.name);
            assert_eq!(metrics.youden_threshold, case.youden_threshold, "{}", case.name);
        }
    }

    #[test]
    fn delong_variance_is_exactly_zero_when_separated_or_constant() {
        for rows in [
            &[(0, 0.1), (0, 0.2), (1, 0.8), (1, 0.9)][..],
            &[(1, 0.5), (0, 0.5), (1, 0.5), (0, 0.5)],
        ] {
            let (y, s) = labelled(rows);
            let auc = auc_delong(&y, &s).unwrap().unwrap();
            assert_eq!(auc.variance, Some(0.0));
            assert_eq!((auc.ci_lower, auc.ci_upper), (Some(auc.auc), Some(auc.auc)));
        }
    }

    #[test]
    fn undefined_values_are_none() {
        let (y, s) = labelled(&[(1, 0.9), (0, 0.1), (0, 0.2)]);
        let metrics = binary_metrics(&y, &s).unwrap();
        assert_eq!(metrics.auc, Some(1.0));
        assert_eq!(metrics.auc_var, None, "one positive: DeLong variance undefined");
        let (y, s) = labelled(&[(0, 0.9), (0, 0.1)]);
        let metrics = binary_metrics(&y, &s).unwrap();
        assert_eq!(
            (
                metrics.auc,
                metrics.average_precision,
                metrics.sensitivity_at_half
            ),
            (None, None, None)
        );
        assert_eq!(metrics.specificity_at_half, Some(0.5));
    }

    #[test]
    fn bad_input_names_the_row() {
        assert_eq!(binary_metrics(&[], &[]), Err(StatsError::Empty));
        assert_eq!(
            binary_metrics(&[true, false], &[0.5, 1.5]),
            Err(StatsError::ScoreOutOfRange { row: 1, value: 1.5 })
        );
        assert!(matches!(
            binary_metrics(&[true], &[f64::NAN]),
            Err(StatsError::ScoreOutOfRange { row: 0, .. })
        ));
        assert!(matches!(
            binary_metrics(&[true], &[0.1, 0.2]),
            Err(StatsError::LengthMismatch { .. })
        ));
    }

    #[test]
    fn paired_delong_of_a_score_with_itself_has_zero_difference() {
        let (y, s) = labelled(&[(0, 0.1), (1, 0.35), (0, 0.4), (1, 0.8), (0, 0.3), (1, 0.3)]);
        let test = paired_delong(&y, &s, &s).unwrap().unwrap();
        assert_eq!(test.delta, 0.0);
        assert_eq!(test.se, Some(0.0));
        assert_eq!((test.z, test.p), (None, None));
    }

    #[test]
    fn net_benefit_of_a_perfect_score_is_the_prevalence() {
        let (y, s) = labelled(&[(0, 0.1), (0, 0.2), (1, 0.8), (1, 0.9)]);
        let curve = net_benefit(&y, &s, &[0.0, 0.5, 1.0]).unwrap();
        assert_eq!(curve.len(), 1, "thresholds 0 and 1 are outside (0, 1)");
        assert_eq!(curve[0].model, 0.5);
        assert_eq!(curve[0].treat_all, 0.0);
    }

    /// Sun & Xu's midrank formulas, sequentially in floats: T_Z, T_X, T_Y midranks by sorting.
    fn delong_by_midranks(y: &[bool], s: &[f64]) -> (f64, f64) {
        let midranks = |values: &[f64]| {
            let mut order: Vec<usize> = (0..values.len()).collect();
            order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
            let mut ranks = vec![0.0; values.len()];
            let mut start = 0;
            while start < order.len() {
                let mut end = start;
                while end < order.len() && values[order[end]] == values[order[start]] {
                    end += 1;
                }
                for &i in &order[start..end] {
                    ranks[i] = (start + end + 1) as f64 / 2.0;
                }
                start = end;
            }
            ranks
        };
        let positives: Vec<f64> = y.iter().zip(s).filter(|(y, _)| **y).map(|(_, s)| *s).collect();
        let negatives: Vec<f64> = y.iter().zip(s).filter(|(y, _)| !**y).map(|(_, s)| *s).collect();
        let (m, n) = (positives.len() as f64, negatives.len() as f64);
        let pooled: Vec<f64> = positives.iter().chain(&negatives).copied().collect();
        let (tz, tx, ty) = (midranks(&pooled), midranks(&positives), midranks(&negatives));
        let v10: Vec<f64> = (0..positives.len()).map(|i| (tz[i] - tx[i]) / n).collect();
        let v01: Vec<f64> = (0..negatives.len())
            .map(|j| 1.0 - (tz[positives.len() + j] - ty[j]) / m)
            .collect();
        let auc = v10.iter().sum::<f64>() / m;
        (
            auc,
            sample_variance(&v10).unwrap() / m + sample_variance(&v01).unwrap() / n,
        )
    }

    /// On many rows (blocks of whole groups on several threads, groups spanning blocks) the AUC and
    /// DeLong variance are those of the midrank formulas.
    #[test]
    fn auc_and_delong_on_many_rows_equal_the_midrank_formulas() {
        let mut random = crate::test_random::xorshift(0x5851_f42d_4c95_7f2d_u64);
        for levels in [7, 3000, 1 << 40] {
            let (y, s): (Vec<bool>, Vec<f64>) = (0..100_003)
                .map(|_| {
                    let positive = random() % 5 < 2;
                    let level = random() % levels + if positive { levels / 3 } else { 0 };
                    (positive, level as f64 / (levels + levels / 3) as f64)
                })
                .unzip();
            let estimate = auc_delong(&y, &s).unwrap().unwrap();
            let (auc, variance) = delong_by_midranks(&y, &s);
            assert!((estimate.auc - auc).abs() <= 1e-12, "{} vs {auc}", estimate.auc);
            let ours = estimate.variance.unwrap();
            assert!((ours - variance).abs() <= 1e-9 * variance, "{ours} vs {variance}");
        }
    }

    /// The float path for classes too large for the exact integers gives the same variance.
    #[test]
    fn delong_variance_in_floats_agrees_with_the_exact_integers() {
        let mut random = crate::test_random::xorshift(0x0123_4567_89ab_cdef_u64);
        for (n, levels) in [(50_000, 1000), (20_000, 1_000_000), (100, 5)] {
            let (y, s): (Vec<bool>, Vec<f64>) = (0..n)
                .map(|_| {
                    let positive = random().is_multiple_of(3);
                    let level = random() % levels + if positive { levels / 5 } else { 0 };
                    (positive, level as f64 / (levels + levels / 5) as f64)
                })
                .unzip();
            let keys = SortedKeys::new(&y, &s).unwrap();
            let exact = auc(&keys).unwrap();
            let floats = delong_variance_in_floats(&keys, exact.auc);
            let groups = keys.into_groups();
            assert_eq!(auc(&groups), Some(exact), "the same from the built groups");
            assert_eq!(delong_variance_in_floats(&groups, exact.auc), floats);
            let variance = exact.variance.unwrap();
            assert!(
                (floats - variance).abs() <= 1e-12 * variance,
                "{floats} vs {variance}"
            );
        }
    }

    fn scored_rows() -> impl Strategy<Value = (Vec<bool>, Vec<f64>)> {
        // Scores on a coarse grid so that ties are frequent.
        prop::collection::vec((any::<bool>(), 0_u8..=20), 1..60)
            .prop_map(|rows| rows.into_iter().map(|(y, s)| (y, f64::from(s) / 20.0)).unzip())
    }

    proptest! {
        #[test]
        fn auc_equals_the_pair_count((y, s) in scored_rows()) {
            let auc = auc_delong(&y, &s).unwrap();
            let both_classes = y.iter().any(|&v| v) && y.iter().any(|&v| !v);
            prop_assert_eq!(auc.is_some(), both_classes);
            if let Some(auc) = auc {
                prop_assert!((auc.auc - auc_by_pairs(&y, &s)).abs() < 1e-12);
            }
        }

        #[test]
        fn delong_variance_equals_the_pair_formula((y, s) in scored_rows()) {
            if let Some(AucEstimate { variance: Some(variance), .. }) = auc_delong(&y, &s).unwrap() {
                let reference = delong_variance_by_pairs(&y, &s);
                prop_assert!((variance - reference).abs() <= 1e-12 * reference.max(1.0), "{} vs {}", variance, reference);
            }
        }

        #[test]
        fn youden_maximises_j_over_all_observed_thresholds((y, s) in scored_rows()) {
            if let Some(table) = TieGroups::new(&y, &s).unwrap().youden_table() {
                let scores = TieGroups::new(&y, &s).unwrap();
                let j = |t: &ConfusionTable| t.tp as f64 / scores.n_pos as f64 + t.tn as f64 / scores.n_neg as f64;
                for &candidate in &s {
                    let other = scores.table_at(candidate);
                    prop_assert!(j(&other) <= j(&table) + 1e-12);
                    if candidate > table.threshold {
                        prop_assert!(j(&other) < j(&table) - 1e-12, "a larger threshold ties: {}", candidate);
                    }
                }
            }
        }
    }
}
