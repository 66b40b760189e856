//! Calibration of predicted probabilities: logistic recalibration of logit(s) (intercept and slope),
//! calibration-in-the-large (the intercept with the slope fixed at 1), and binned observed-vs-predicted
//! points for the calibration plot.
//!
//! Scores are clipped to [`CLIP`, 1 − `CLIP`] before the logit, so that a model that outputs exactly
//! 0 or 1 (a saturated f32 sigmoid) still has a finite logit.
//!
//! The fits run on the rows grouped by distinct score ([`TieGroups`], which the binary report sorts
//! anyway): the likelihood of a group is that of its rows, so each Newton pass goes over the distinct
//! scores with their class counts as weights, and each logit is taken once per distinct score.

use super::logistic;
use super::parallel::{block_sums, map_blocks_mut};
use super::sum::CompensatedSum;
use super::ties::TieGroups;
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
    /// The SE of b (inverse information, as statsmodels' `bse`): what a meta-analysis of the sites'
    /// slopes weighs by. `None` where b is.
    pub calibration_slope_se: Option<f64>,
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
/// (equal lengths, not empty, scores in [0, 1], checked by the caller: on other rows every value is
/// `None`).
#[must_use]
pub fn calibration(y: &[bool], s: &[f64]) -> Calibration {
    TieGroups::new(y, s).map_or(UNDEFINED, |groups| of_groups(&groups))
}

/// No estimate at all (a single class).
const UNDEFINED: Calibration = Calibration {
    calibration_intercept: None,
    calibration_slope: None,
    calibration_slope_se: None,
    calibration_in_the_large: None,
};

/// [`calibration`] of rows already grouped by score.
pub(crate) fn of_groups(groups: &TieGroups) -> Calibration {
    if groups.n_pos == 0 || groups.n_neg == 0 {
        return UNDEFINED;
    }
    let mut logits = vec![0.0_f64; groups.len()];
    let summaries: Vec<Summary> = map_blocks_mut(&mut logits, |range, out| {
        let runs = out.chunks_mut(SUMMARY_GROUPS).zip(range.step_by(SUMMARY_GROUPS));
        runs.map(|(run, first)| {
            let mut summary = Summary::default();
            for (g, logit) in (first..).zip(run) {
                *logit = clipped_logit(groups.score(g));
                summary.add(*logit, groups.positives(g), groups.negatives(g));
            }
            summary
        })
        .collect::<Vec<_>>()
    })
    .into_iter()
    .flatten()
    .collect();
    let data = Grouped {
        logits: &logits,
        groups,
    };
    let overlap = summaries
        .iter()
        .fold(LogitRanges::EMPTY, |r, s| r.merge(&s.ranges))
        .overlap();
    // On many distinct scores, both fits first run on the summaries (one point a run of
    // [`SUMMARY_GROUPS`] groups, at the run's mean logit): that moves where the full iterations start
    // (close to the maximiser, so that two passes usually reach the tolerance), not where they stop.
    let (coarse_in_the_large, coarse_fit) = if summaries.len() >= COARSE_MIN_SUMMARIES {
        coarse_fits(&summaries)
    } else {
        (None, None)
    };
    let in_the_large_start = coarse_in_the_large.unwrap_or(0.0);
    let (in_the_large, joint_fit) = match coarse_fit {
        Some(start) if overlap => {
            let (in_the_large, fit) = fit_jointly(&data, Some(in_the_large_start), Some(start));
            (in_the_large, Some((start, fit)))
        }
        _ => (fit_jointly(&data, Some(in_the_large_start), None).0, None),
    };
    // Without a start from the summaries, the recalibration starts from calibration-in-the-large with
    // slope 1.
    let (start, mut fit) = joint_fit.unwrap_or_else(|| {
        let start = (in_the_large.unwrap_or(0.0), 1.0);
        (
            start,
            overlap.then(|| fit_jointly(&data, None, Some(start)).1).flatten(),
        )
    });
    // Newton's iteration is not globally convergent: from a start far from the maximiser on a tiny or
    // awkward cohort it can overshoot and diverge where the engine's start (β = 0) converges. Then the
    // engine's start decides, so that the fit is the engine's whenever the engine has one.
    if overlap && fit.is_none() && start != (0.0, 0.0) {
        fit = fit_jointly(&data, None, Some((0.0, 0.0))).1;
    }
    Calibration {
        calibration_intercept: fit.map(|f| f.0),
        calibration_slope: fit.map(|f| f.1),
        calibration_slope_se: fit.map(|f| f.2),
        calibration_in_the_large: in_the_large,
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

/// One-covariate data in groups: group g of `groups` with covariate `logits[g]` (its score, clipped,
/// is read by calibration-in-the-large only).
struct Grouped<'a> {
    logits: &'a [f64],
    groups: &'a TieGroups,
}

impl Grouped<'_> {
    /// (positives, rows) of group g, as weights.
    fn counts(&self, g: usize) -> (f64, f64) {
        let (positives, negatives) = (self.groups.positives(g), self.groups.negatives(g));
        (positives as f64, (positives + negatives) as f64)
    }
}

/// Both fits from given starts (a fit without a start is not run), their Newton iterations side by
/// side so that one pass over the groups serves both:
/// - calibration-in-the-large: a of logit P(y) = a + logit(p), p the score clipped to [`CLIP`,
///   1 − `CLIP`]; one-parameter Newton on Σ (y − σ(a + logit p)) = 0, which is concave and has a
///   finite root whenever both classes are present. σ(a + logit p) = p·e^a / (p·e^a + 1 − p): no
///   exponential per group.
/// - the recalibration (a, b) of logit P(y) = a + b·logit(s): the maximum-likelihood fit of the
///   study's logistic engine ([`logistic::fit`]: Newton's iteration with its convergence rule,
///   max |Δβ| ≤ [`logistic::TOLERANCE`]), specialised to one covariate: five sums of the score and
///   information a pass and a 2×2 solve, instead of the general engine's design matrix. The caller
///   checks that the classes' logit ranges overlap (in one dimension separation is exactly their not
///   overlapping). Returns (a, b, SE of b), the SE from the information of the last iterate (within
///   the tolerance of the maximiser).
///
/// Each is `None` where it does not converge (or a step is not finite).
fn fit_jointly(
    data: &Grouped<'_>,
    in_the_large: Option<f64>,
    recalibration: Option<(f64, f64)>,
) -> (Option<f64>, Option<(f64, f64, f64)>) {
    let (mut offset, mut offset_running, mut offset_fit) =
        (in_the_large.unwrap_or(0.0), in_the_large.is_some(), None);
    let ((mut a, mut b), mut slope_running, mut slope_fit) =
        (recalibration.unwrap_or((0.0, 0.0)), recalibration.is_some(), None);
    for _ in 0..logistic::MAX_ITERATIONS {
        if !(offset_running || slope_running) {
            break;
        }
        let odds_ratio = offset.exp();
        let [score, information, g0, g1, h00, h01, h11] = block_sums(data.logits.len(), |g| {
            let (positives, rows) = data.counts(g);
            let mut terms = [0.0; 7];
            if offset_running {
                let p = data.groups.score(g).clamp(CLIP, 1.0 - CLIP);
                let scaled = p * odds_ratio;
                let mu = scaled / (scaled + (1.0 - p));
                terms[0] = positives - rows * mu;
                terms[1] = rows * mu * (1.0 - mu);
            }
            if slope_running {
                let x = data.logits[g];
                let mu = 1.0 / (1.0 + (-(a + b * x)).exp());
                let (residual, w) = (positives - rows * mu, rows * mu * (1.0 - mu));
                terms[2..].copy_from_slice(&[residual, residual * x, w, w * x, w * x * x]);
            }
            terms
        });
        if offset_running {
            let step = score / information;
            offset += step;
            if !step.is_finite() || step.abs() <= logistic::TOLERANCE {
                offset_running = false;
                offset_fit = step.is_finite().then_some(offset);
            }
        }
        if slope_running {
            let det = h00 * h11 - h01 * h01;
            let (da, db) = ((h11 * g0 - h01 * g1) / det, (h00 * g1 - h01 * g0) / det);
            a += da;
            b += db;
            if !(da.is_finite() && db.is_finite()) {
                slope_running = false;
            } else if da.abs() <= logistic::TOLERANCE && db.abs() <= logistic::TOLERANCE {
                slope_running = false;
                // The [1][1] element of the inverse of [[h00, h01], [h01, h11]].
                let se = (h00 / det).sqrt();
                slope_fit = se.is_finite().then_some((a, b, se));
            }
        }
    }
    (offset_fit, slope_fit)
}

/// Consecutive groups in one [`Summary`]; a divisor of `parallel::BLOCK`, so that the summaries do
/// not depend on the threads.
const SUMMARY_GROUPS: usize = 256;
const _: () = assert!(super::parallel::BLOCK.is_multiple_of(SUMMARY_GROUPS));

/// Fewest summaries for which the fits start from the fits on the summaries.
const COARSE_MIN_SUMMARIES: usize = 1024;

/// What the fits need of a run of [`SUMMARY_GROUPS`] consecutive groups.
#[derive(Debug, Clone, Copy, Default)]
struct Summary {
    positives: u64,
    negatives: u64,
    /// Σ rows·logit over the run's groups.
    weighted_logits: f64,
    ranges: LogitRanges,
}

impl Summary {
    fn add(&mut self, logit: f64, positives: u64, negatives: u64) {
        self.positives += positives;
        self.negatives += negatives;
        self.weighted_logits += (positives + negatives) as f64 * logit;
        self.ranges = self.ranges.merge(&LogitRanges {
            positive: if positives > 0 {
                (logit, logit)
            } else {
                LogitRanges::EMPTY.positive
            },
            negative: if negatives > 0 {
                (logit, logit)
            } else {
                LogitRanges::EMPTY.negative
            },
        });
    }
}

/// (lowest, highest) logit of each class; (+∞, −∞) for a class without rows.
#[derive(Debug, Clone, Copy)]
struct LogitRanges {
    positive: (f64, f64),
    negative: (f64, f64),
}

impl Default for LogitRanges {
    fn default() -> Self {
        Self::EMPTY
    }
}

impl LogitRanges {
    const EMPTY: Self = Self {
        positive: (f64::INFINITY, f64::NEG_INFINITY),
        negative: (f64::INFINITY, f64::NEG_INFINITY),
    };

    fn merge(&self, other: &Self) -> Self {
        let join = |a: (f64, f64), b: (f64, f64)| (a.0.min(b.0), a.1.max(b.1));
        Self {
            positive: join(self.positive, other.positive),
            negative: join(self.negative, other.negative),
        }
    }

    /// Both classes present and no threshold on logit(s) separating them (ties allowed: a tie at the
    /// threshold is quasi-complete separation).
    fn overlap(&self) -> bool {
        self.negative.1 > self.positive.0 && self.positive.1 > self.negative.0
    }
}

/// The fits on the summaries (each one group at its mean logit): (calibration-in-the-large,
/// recalibration (a, b)), each `None` where it fails on them.
fn coarse_fits(summaries: &[Summary]) -> (Option<f64>, Option<(f64, f64)>) {
    let logits: Vec<f64> = summaries
        .iter()
        .map(|b| b.weighted_logits / (b.positives + b.negatives) as f64)
        .collect();
    let score_bits: Vec<u64> = logits
        .iter()
        .map(|&x| (1.0 / (1.0 + (-x).exp())).to_bits())
        .collect();
    let groups = TieGroups::from_counts(score_bits, summaries.iter().map(|s| (s.positives, s.negatives)));
    let data = Grouped {
        logits: &logits,
        groups: &groups,
    };
    let in_the_large = fit_jointly(&data, Some(0.0), None).0;
    let ranges = LogitRanges {
        positive: min_max(&logits, |g| groups.positives(g) > 0),
        negative: min_max(&logits, |g| groups.negatives(g) > 0),
    };
    let recalibration = in_the_large
        .filter(|_| ranges.overlap())
        .and_then(|a| fit_jointly(&data, None, Some((a, 1.0))).1)
        .map(|(a, b, _)| (a, b));
    (in_the_large, recalibration)
}

/// (lowest, highest) of the logits of the groups `keep` selects; (+∞, −∞) when none.
fn min_max(logits: &[f64], keep: impl Fn(usize) -> bool) -> (f64, f64) {
    (0..logits.len())
        .filter(|&g| keep(g))
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), g| {
            (lo.min(logits[g]), hi.max(logits[g]))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The recalibration fit of rows (one group a row, covariate `x`) from the engine's start (β = 0),
    /// `None` where the classes' ranges of `x` do not overlap.
    fn recalibration_fit(y: &[bool], x: &[f64]) -> Option<(f64, f64, f64)> {
        // Each row its own group; the scores are not read by the recalibration.
        let groups = TieGroups::from_counts(
            vec![0; y.len()],
            y.iter().map(|&yi| (u64::from(yi), u64::from(!yi))),
        );
        let data = Grouped {
            logits: x,
            groups: &groups,
        };
        let ranges = LogitRanges {
            positive: min_max(x, |g| y[g]),
            negative: min_max(x, |g| !y[g]),
        };
        ranges
            .overlap()
            .then(|| fit_jointly(&data, None, Some((0.0, 0.0))).1)
            .flatten()
    }

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
                c.calibration_slope_se,
                c.calibration_in_the_large
            ),
            (None, None, None, None)
        );
        let c = calibration(&[true, false, true, false], &[1.0, 0.0, 0.7, 0.6]);
        assert!(c.calibration_in_the_large.is_some_and(f64::is_finite));
    }

    /// The one-covariate fit is the general engine's fit (same iteration, same stopping rule), on
    /// overlapping cohorts, and gives no estimate exactly where the engine gives none.
    #[test]
    fn the_specialised_fit_is_the_general_engines() {
        use crate::design::{DesignSpec, TermColumn, TermSpec};
        use crate::logistic::{FitOptions, FitStatus};
        let engine = |y: &[bool], x: &[f64]| {
            let spec = DesignSpec::new(vec![TermSpec::numeric("logit_score")]).unwrap();
            let design = spec.build(y.len(), &[TermColumn::Numeric(x)]).ok()?;
            let fit = logistic::fit(&design, y, FitOptions::default()).ok()?;
            (fit.status == FitStatus::Ok).then(|| {
                (
                    fit.terms[0].coef.unwrap(),
                    fit.terms[1].coef.unwrap(),
                    fit.terms[1].se.unwrap(),
                )
            })
        };
        let mut uniform = crate::test_random::uniform(0x2545_f491_4f6c_dd1d_u64);
        for (n, shift) in [(50, 0.5), (400, 1.5), (3000, 0.2), (20_000, 2.5)] {
            let (mut y, mut x) = (Vec::new(), Vec::new());
            for _ in 0..n {
                let positive = uniform() < 0.37;
                y.push(positive);
                x.push(uniform() * 4.0 - 2.0 + if positive { shift } else { 0.0 });
            }
            let (fast, general) = (recalibration_fit(&y, &x).unwrap(), engine(&y, &x).unwrap());
            assert!(
                (fast.0 - general.0).abs() <= 1e-9 * (1.0 + general.0.abs())
                    && (fast.1 - general.1).abs() <= 1e-9 * (1.0 + general.1.abs())
                    && (fast.2 - general.2).abs() <= 1e-9 * general.2,
                "n = {n}: {fast:?} vs {general:?}"
            );
        }
        // A tiny cohort where Newton from calibration-in-the-large overshoots and diverges (found by the
        // statsmodels reference): the fit falls back to the engine's start and is the engine's.
        let (y, s) = ([false, true, true, true], [0.7, 0.2, 0.9, 0.4]);
        let x: Vec<f64> = s.iter().map(|&p| clipped_logit(p)).collect();
        let c = calibration(&y, &s);
        let general = engine(&y, &x).unwrap();
        assert!((c.calibration_intercept.unwrap() - general.0).abs() <= 1e-9);
        assert!((c.calibration_slope.unwrap() - general.1).abs() <= 1e-9);
        assert!((c.calibration_slope_se.unwrap() - general.2).abs() <= 1e-9 * general.2);
        // Separated, quasi-separated (a tie at the threshold), constant, one class: neither fits.
        let cases: [(&[bool], &[f64]); 4] = [
            (&[false, false, true, true], &[-1.0, 0.0, 0.5, 2.0]),
            (&[false, false, true, true], &[-1.0, 0.5, 0.5, 2.0]),
            (&[false, true, false, true], &[0.3, 0.3, 0.3, 0.3]),
            (&[true, true, true], &[0.1, 0.2, 0.3]),
        ];
        for (y, x) in cases {
            assert_eq!(recalibration_fit(y, x), None, "{y:?} {x:?}");
            assert_eq!(engine(y, x), None, "{y:?} {x:?}");
        }
    }

    /// On many distinct scores the fits start from the summaries' fits: same maximiser as from the
    /// engine's start, and the same calibration-in-the-large as from 0.
    #[test]
    fn the_start_from_the_summaries_moves_where_the_fits_start_not_where_they_stop() {
        let n = SUMMARY_GROUPS * COARSE_MIN_SUMMARIES + 999;
        let mut uniform = crate::test_random::uniform(0x9e37_79b9_7f4a_7c15_u64);
        let (mut y, mut s) = (Vec::new(), Vec::new());
        for _ in 0..n {
            let positive = uniform() < 0.3;
            let logit = uniform() * 5.0 - 3.0 + if positive { 1.3 } else { 0.0 };
            y.push(positive);
            s.push(1.0 / (1.0 + (-logit).exp()));
        }
        let groups = TieGroups::new(&y, &s).unwrap();
        assert!(groups.len().div_ceil(SUMMARY_GROUPS) >= COARSE_MIN_SUMMARIES);
        let c = of_groups(&groups);
        let logits: Vec<f64> = (0..groups.len())
            .map(|g| clipped_logit(groups.score(g)))
            .collect();
        let data = Grouped {
            logits: &logits,
            groups: &groups,
        };
        let (in_the_large, fit) = fit_jointly(&data, Some(0.0), Some((0.0, 0.0)));
        let (in_the_large, (a, b, se)) = (in_the_large.unwrap(), fit.unwrap());
        let close = |x: Option<f64>, y: f64| (x.unwrap() - y).abs() <= 1e-12 * (1.0 + y.abs());
        assert!(
            close(c.calibration_in_the_large, in_the_large),
            "{c:?} vs {in_the_large}"
        );
        assert!(
            close(c.calibration_intercept, a) && close(c.calibration_slope, b),
            "{c:?} vs {a}, {b}"
        );
        assert!(close(c.calibration_slope_se, se), "{c:?} vs {se}");
        // And the grouped rows give the fit of the rows one by one.
        let x: Vec<f64> = s.iter().map(|&p| clipped_logit(p)).collect();
        let by_rows = recalibration_fit(&y, &x).unwrap();
        assert!(
            (by_rows.0 - a).abs() <= 1e-9 && (by_rows.1 - b).abs() <= 1e-9,
            "{by_rows:?} vs {a}, {b}"
        );
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
