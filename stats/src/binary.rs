//! Binary-outcome metrics (lymph node metastasis yes/no against a score in [0, 1]): AUC with its
//! DeLong variance and CI, the Youden-optimal threshold, average precision, Brier score, 2×2 tables
//! with PPV/NPV and Wilson intervals, ROC points, the paired DeLong test and decision-curve net benefit.
//!
//! Every definition is the one of `statistics.md`. AUC and DeLong are O(n log n): one radix sort of
//! each class's scores, then a merge walk of the tie groups, which gives the midrank quantities of
//! Sun & Xu (2014) directly (T_Z − T_X for a positive = negatives below + ½ negatives tied); no pair
//! loop. Integer quantities (win counts, confusion counts, Youden's criterion) are exact integers
//! until the one final division.

use super::StatsError;
use super::calibration::{Calibration, calibration};
use super::normal::{Z_95, normal_two_sided_p, wilson_interval};
#[cfg(test)]
use super::sum::sample_variance;
use super::sum::{CompensatedSum, sample_covariance, sum};
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
    let sorted = SortedScores::new(y, s)?;
    let (p, n) = (sorted.n_pos, sorted.n_neg);
    let total = p + n;
    let auc = sorted.auc();
    let youden = sorted.youden_table();
    let youden_rate =
        |table: &ConfusionTable, f: fn(&ConfusionTable) -> Option<Proportion>| f(table).map(|x| x.value);
    let table_at_half = sorted.table_at(0.5);
    Ok(BinaryMetrics {
        n: total,
        n_pos: p,
        n_neg: n,
        lnm_rate: p as f64 / total as f64,
        // total > 0 was checked by SortedScores::new.
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
        brier: sum(y
            .iter()
            .zip(s)
            .map(|(&yi, &si)| (si - f64::from(u8::from(yi))).powi(2)))
            / total as f64,
        sensitivity_at_half: table_at_half.sensitivity.map(|x| x.value),
        specificity_at_half: table_at_half.specificity.map(|x| x.value),
        // total > 0, so accuracy is defined.
        accuracy_at_half: table_at_half.accuracy.map_or(0.0, |x| x.value),
        youden_table: youden,
        table_at_half,
        calibration: calibration(y, s),
    })
}

/// AUC (Mann–Whitney, ties counted ½) with the DeLong variance and clipped CI; `None` when only one
/// class is present.
pub fn auc_delong(y: &[bool], s: &[f64]) -> Result<Option<AucEstimate>, StatsError> {
    Ok(SortedScores::new(y, s)?.auc())
}

/// ROC curve points at every distinct score, from (0, 0) to (1, 1).
pub fn roc_curve(y: &[bool], s: &[f64]) -> Result<Vec<RocPoint>, StatsError> {
    let sorted = SortedScores::new(y, s)?;
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
    let a = SortedScores::new(y, score_a)?;
    let b = SortedScores::new(y, score_b)?;
    let (Some(auc_a), Some(auc_b)) = (a.auc(), b.auc()) else {
        return Ok(None);
    };
    let (va10, va01) = a.placements();
    let (vb10, vb01) = b.placements();
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
    let sorted = SortedScores::new(y, s)?;
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
                treat_all: prevalence - (1.0 - prevalence) * odds,
            }
        })
        .collect())
}

/// The scores sorted once, with their classes; every metric above is a walk over the tie groups of
/// this sorted array, or a binary search in it.
///
/// One sort of packed keys: a score in [0, 1] is a non-negative f64 whose bit pattern is below 2^62
/// and ordered like the value, so `bits << 1 | class` sorts by score and fits a u64 (8 bytes a row,
/// sorted with pattern-defeating quicksort). A positive's DeLong placement V10 is the share of
/// negatives below its score (ties count ½), the same for its whole tie group: no index
/// permutation, no pair loop.
struct SortedScores<'a> {
    y: &'a [bool],
    s: &'a [f64],
    /// `score bits << 1 | class`, ascending.
    keys: Vec<u64>,
    n_pos: u64,
    n_neg: u64,
}

/// All rows sharing one score value, and how many rows of each class score strictly below it.
#[derive(Debug, Clone, Copy)]
struct TieGroup {
    score: f64,
    positives: u64,
    negatives: u64,
    positives_below: u64,
    negatives_below: u64,
}

impl<'a> SortedScores<'a> {
    fn new(y: &'a [bool], s: &'a [f64]) -> Result<Self, StatsError> {
        check_lengths("y_true", y.len(), "y_score", s.len())?;
        if y.is_empty() {
            return Err(StatsError::Empty);
        }
        if let Some((row, &value)) = s.iter().enumerate().find(|(_, v)| !(0.0..=1.0).contains(*v)) {
            return Err(StatsError::ScoreOutOfRange { row, value });
        }
        // `+ 0.0` turns -0.0 into 0.0; every score is now in [0, 1], so its bits fit 62 bits.
        let mut keys: Vec<u64> = y
            .iter()
            .zip(s)
            .map(|(&yi, &si)| (score_bits(si) << 1) | u64::from(yi))
            .collect();
        keys.sort_unstable();
        let n_pos = y.iter().filter(|&&yi| yi).count() as u64;
        Ok(Self {
            y,
            s,
            keys,
            n_pos,
            n_neg: y.len() as u64 - n_pos,
        })
    }

    /// Tie groups in ascending score order.
    fn groups(&self) -> impl Iterator<Item = TieGroup> + '_ {
        let (mut positives_below, mut negatives_below) = (0, 0);
        self.keys.chunk_by(|a, b| a >> 1 == b >> 1).map(move |chunk| {
            let positives = chunk.iter().filter(|&&key| key & 1 == 1).count() as u64;
            let negatives = chunk.len() as u64 - positives;
            let group = TieGroup {
                score: f64::from_bits(chunk[0] >> 1),
                positives,
                negatives,
                positives_below,
                negatives_below,
            };
            positives_below += positives;
            negatives_below += negatives;
            group
        })
    }

    /// AUC = Σ over positives of (negatives below + ½ negatives tied) / (m·n), summed exactly in
    /// integers (doubled), so the only rounding is the final division.
    fn auc(&self) -> Option<AucEstimate> {
        if self.n_pos == 0 || self.n_neg == 0 {
            return None;
        }
        let doubled_wins: u128 = self
            .groups()
            .map(|g| u128::from(g.positives) * (2 * u128::from(g.negatives_below) + u128::from(g.negatives)))
            .sum();
        let (m, n) = (u128::from(self.n_pos), u128::from(self.n_neg));
        let auc = doubled_wins as f64 / (2 * m * n) as f64;
        let variance = self.delong_variance(auc);
        let half_width = variance.map(|v| Z_95 * v.sqrt());
        Some(AucEstimate {
            auc,
            variance,
            ci_lower: half_width.map(|h| (auc - h).clamp(0.0, 1.0)),
            ci_upper: half_width.map(|h| (auc + h).clamp(0.0, 1.0)),
        })
    }

    /// V10 of a positive scoring in `group`: negatives below plus half the negatives tied, over n.
    fn v10(&self, group: &TieGroup) -> f64 {
        (group.negatives_below as f64 + 0.5 * group.negatives as f64) / self.n_neg as f64
    }

    /// V01 of a negative scoring in `group`: positives above plus half the positives tied, over m.
    fn v01(&self, group: &TieGroup) -> f64 {
        let positives_above = self.n_pos - group.positives_below - group.positives;
        (positives_above as f64 + 0.5 * group.positives as f64) / self.n_pos as f64
    }

    /// DeLong (Sun & Xu 2014): Var = S10/m + S01/n over the placements V10 (positives) and V01
    /// (negatives), constant within a tie group; `None` with fewer than two of a class. Both
    /// placement means equal the AUC exactly, so one compensated pass gives both sums of squares.
    fn delong_variance(&self, auc: f64) -> Option<f64> {
        if self.n_pos < 2 || self.n_neg < 2 {
            return None;
        }
        let (mut squares10, mut squares01) = (CompensatedSum::default(), CompensatedSum::default());
        for g in self.groups() {
            if g.positives > 0 {
                squares10.add(g.positives as f64 * (self.v10(&g) - auc).powi(2));
            }
            if g.negatives > 0 {
                squares01.add(g.negatives as f64 * (self.v01(&g) - auc).powi(2));
            }
        }
        let (m, n) = (self.n_pos as f64, self.n_neg as f64);
        Some(squares10.total() / (m - 1.0) / m + squares01.total() / (n - 1.0) / n)
    }

    /// DeLong placements of every patient, in input order (the paired test needs patients aligned):
    /// V10 for each positive, V01 for each negative.
    fn placements(&self) -> (Vec<f64>, Vec<f64>) {
        let groups: Vec<TieGroup> = self.groups().collect();
        let group_of = |score: f64| {
            let index = groups.partition_point(|g| g.score < score + 0.0);
            // Every observed score has its group, so `index` is in range; `min` only guards the bound.
            &groups[index.min(groups.len() - 1)]
        };
        let mut v10 = Vec::with_capacity(self.keys.len());
        let mut v01 = Vec::with_capacity(self.keys.len());
        for (&yi, &si) in self.y.iter().zip(self.s) {
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
        let (mut tp, mut fp) = (0, 0);
        self.keys
            .chunk_by(|a, b| a >> 1 == b >> 1)
            .rev()
            .map(move |chunk| {
                let positives = chunk.iter().filter(|&&key| key & 1 == 1).count() as u64;
                tp += positives;
                fp += chunk.len() as u64 - positives;
                (f64::from_bits(chunk[0] >> 1), tp, fp)
            })
    }

    /// The Youden-optimal threshold: maximise TP·N + TN·P exactly (integers), the largest threshold
    /// winning ties; `None` when only one class is present.
    fn youden_table(&self) -> Option<ConfusionTable> {
        if self.n_pos == 0 || self.n_neg == 0 {
            return None;
        }
        let (p, n) = (u128::from(self.n_pos), u128::from(self.n_neg));
        let mut best: Option<(u128, f64)> = None;
        for (threshold, tp, fp) in self.cumulative_at_distinct_scores() {
            let criterion = u128::from(tp) * n + (n - u128::from(fp)) * p;
            // Thresholds arrive largest first, so a strict comparison keeps the largest among ties.
            if best.is_none_or(|(b, _)| criterion > b) {
                best = Some((criterion, threshold));
            }
        }
        best.map(|(_, threshold)| self.table_at(threshold))
    }

    /// The 2×2 table at `threshold`: a binary search, then a count of the classes above it.
    fn table_at(&self, threshold: f64) -> ConfusionTable {
        let first_at_or_above = self.keys.partition_point(|&key| key >> 1 < score_bits(threshold));
        let above = &self.keys[first_at_or_above..];
        let tp = above.iter().filter(|&&key| key & 1 == 1).count() as u64;
        let fp = above.len() as u64 - tp;
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

    /// `sklearn.metrics.average_precision_score`: Σ (R_k − R_{k−1})·P_k over distinct thresholds,
    /// step-wise; `None` without positives.
    fn average_precision(&self) -> Option<f64> {
        if self.n_pos == 0 {
            return None;
        }
        let p = self.n_pos as f64;
        let mut previous_tp = 0_u64;
        let terms = self.cumulative_at_distinct_scores().map(|(_, tp, fp)| {
            let recall_step = (tp - previous_tp) as f64 / p;
            previous_tp = tp;
            recall_step * (tp as f64 / (tp + fp) as f64)
        });
        Some(sum(terms))
    }
}

/// The bit pattern of a score in [0, 1], ordered like the value (-0.0 folded into 0.0).
fn score_bits(score: f64) -> u64 {
    (score + 0.0).to_bits()
}

fn proportion(k: u64, n: u64) -> Option<Proportion> {
    let (ci_lower, ci_upper) = wilson_interval(k, n)?;
    Some(Proportion {
        value: k as f64 / n as f64,
        ci_lower,
        ci_upper,
    })
}

fn check_lengths(
    left_name: &'static str,
    left: usize,
    right_name: &'static str,
    right: usize,
) -> Result<(), StatsError> {
    if left == right {
        Ok(())
    } else {
        Err(StatsError::LengthMismatch {
            left_name,
            left,
            right_name,
            right,
        })
    }
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
            if let Some(table) = SortedScores::new(&y, &s).unwrap().youden_table() {
                let scores = SortedScores::new(&y, &s).unwrap();
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
