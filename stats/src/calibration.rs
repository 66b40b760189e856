//! Calibration of predicted probabilities: logistic recalibration of logit(s) (intercept and slope),
//! calibration-in-the-large (the intercept with the slope fixed at 1), and binned observed-vs-predicted
//! points for the calibration plot.
//!
//! Scores are clipped to [`CLIP`, 1 − `CLIP`] before the logit, so that a model that outputs exactly
//! 0 or 1 (a saturated f32 sigmoid) still has a finite logit.

use super::logistic;
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
/// (equal lengths, scores in [0, 1], checked by the caller).
#[must_use]
pub fn calibration(y: &[bool], s: &[f64]) -> Calibration {
    let logits = parallel_map(s, clipped_logit);
    // On many rows, both fits first run on a subsample: that moves where the full-data iterations
    // start (a few steps from the maximiser), not where they stop.
    let start = subsample(y, s).and_then(|(ys, ps)| {
        let in_the_large = intercept_with_offset(&ys, &ps, 0.0)?;
        let xs: Vec<f64> = ps.iter().map(|&p| clipped_logit(p)).collect();
        Some((
            in_the_large,
            recalibration_fit(&ys, &xs, (in_the_large, 1.0)).map(|(a, b, _)| (a, b)),
        ))
    });
    let in_the_large = intercept_with_offset(y, s, start.map_or(0.0, |(a, _)| a));
    let recalibration_start = start
        .and_then(|(_, fit)| fit)
        .unwrap_or((in_the_large.unwrap_or(0.0), 1.0));
    // Newton's iteration is not globally convergent: from a start far from the maximiser on a tiny or
    // awkward cohort it can overshoot and diverge where the engine's start (β = 0) converges. Then the
    // engine's start decides, so that the fit is the engine's whenever the engine has one.
    let fit = recalibration_fit(y, &logits, recalibration_start).or_else(|| {
        (recalibration_start != (0.0, 0.0))
            .then(|| recalibration_fit(y, &logits, (0.0, 0.0)))
            .flatten()
    });
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

/// (a, b) of logit P(y) = a + b·logit(s): the maximum-likelihood fit of the study's logistic
/// engine ([`logistic::fit`]: Newton's iteration with its convergence rule, max |Δβ| ≤
/// [`logistic::TOLERANCE`]), specialised to one covariate: each step is one pass over the
/// rows accumulating the five sums of the score and information (in blocks, the block totals
/// compensated) and a 2×2 solve, instead of the general engine's design matrix. `None` where the engine
/// gives no estimate: a single class, a constant logit, separation (in one dimension exactly when
/// the two classes' logit ranges do not overlap), or no convergence. Returns (a, b, SE of b), the SE
/// from the information of the last iterate (within the tolerance of the maximiser).
fn recalibration_fit(y: &[bool], logits: &[f64], start: (f64, f64)) -> Option<(f64, f64, f64)> {
    let (mut positive, mut negative) = (
        (f64::INFINITY, f64::NEG_INFINITY),
        (f64::INFINITY, f64::NEG_INFINITY),
    );
    for (&yi, &x) in y.iter().zip(logits) {
        let range = if yi { &mut positive } else { &mut negative };
        *range = (range.0.min(x), range.1.max(x));
    }
    // One class, or a threshold on logit(s) that separates them (ties allowed: quasi-complete).
    if !(negative.1 > positive.0 && positive.1 > negative.0) {
        return None;
    }
    // From `start` (near the maximiser: the subsample's fit, or calibration-in-the-large with slope
    // 1), fewer steps than from the engine's β = 0 to the same maximiser: the log-likelihood is
    // strictly concave once the classes overlap.
    let (mut a, mut b) = start;
    for _ in 0..logistic::MAX_ITERATIONS {
        let [g0, g1, h00, h01, h11] = score_and_information(y, logits, a, b);
        let det = h00 * h11 - h01 * h01;
        let (da, db) = ((h11 * g0 - h01 * g1) / det, (h00 * g1 - h01 * g0) / det);
        if !(da.is_finite() && db.is_finite()) {
            return None;
        }
        a += da;
        b += db;
        if da.abs() <= logistic::TOLERANCE && db.abs() <= logistic::TOLERANCE {
            // The [1][1] element of the inverse of [[h00, h01], [h01, h11]].
            let se = (h00 / det).sqrt();
            return se.is_finite().then_some((a, b, se));
        }
    }
    None
}

/// Rows of the subsample the fits start from ([`subsample`]).
const SUBSAMPLE_ROWS: usize = 100_000;

/// Every k-th row of a large cohort (at least 4·[`SUBSAMPLE_ROWS`] rows), about
/// [`SUBSAMPLE_ROWS`] of them; `None` for a smaller one.
fn subsample(y: &[bool], x: &[f64]) -> Option<(Vec<bool>, Vec<f64>)> {
    if y.len() < 4 * SUBSAMPLE_ROWS {
        return None;
    }
    let k = y.len() / SUBSAMPLE_ROWS;
    Some((
        y.iter().step_by(k).copied().collect(),
        x.iter().step_by(k).copied().collect(),
    ))
}

/// `f` of every element, on up to the machine's cores (contiguous runs).
fn parallel_map(values: &[f64], f: impl Fn(f64) -> f64 + Sync) -> Vec<f64> {
    let threads = threads_for(values.len().div_ceil(BLOCK));
    let per_thread = values.len().div_ceil(threads).max(1);
    let f = &f;
    // Zeroed pages come from the system untouched: each thread writes (and faults in) its own run.
    let mut out = vec![0.0_f64; values.len()];
    std::thread::scope(|scope| {
        for (run, out) in values.chunks(per_thread).zip(out.chunks_mut(per_thread)) {
            scope.spawn(move || {
                for (o, &v) in out.iter_mut().zip(run) {
                    *o = f(v);
                }
            });
        }
    });
    out
}

/// Rows per block of the plain sums in [`score_and_information`].
const BLOCK: usize = 4096;

/// Threads for work over `blocks` blocks of [`BLOCK`] rows: the machine's cores, at least 16 blocks
/// each, at least 1.
fn threads_for(blocks: usize) -> usize {
    std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .min(blocks / 16)
        .max(1)
}

/// At (a, b): Σ (y − μ), Σ (y − μ)·x, Σ w, Σ w·x, Σ w·x² with μ = σ(a + b·x), w = μ(1 − μ).
fn score_and_information(y: &[bool], x: &[f64], a: f64, b: f64) -> [f64; 5] {
    block_sums(y, x, |yi, xi| {
        let mu = 1.0 / (1.0 + (-(a + b * xi)).exp());
        let (residual, w) = (f64::from(u8::from(yi)) - mu, mu * (1.0 - mu));
        [residual, residual * xi, w, w * xi, w * xi * xi]
    })
}

/// Σ over the rows of `term(y, x)`: plain sums within blocks of [`BLOCK`] rows, on up to the
/// machine's cores (contiguous runs of blocks each), then the block totals compensated in block
/// order, so that the result does not depend on the number of threads.
fn block_sums<const K: usize>(
    y: &[bool],
    x: &[f64],
    term: impl Fn(bool, f64) -> [f64; K] + Sync,
) -> [f64; K] {
    let block = |yb: &[bool], xb: &[f64]| {
        let mut sums = [0.0_f64; K];
        for (&yi, &xi) in yb.iter().zip(xb) {
            for (sum, value) in sums.iter_mut().zip(term(yi, xi)) {
                *sum += value;
            }
        }
        sums
    };
    let blocks = y.len().div_ceil(BLOCK);
    let threads = threads_for(blocks);
    let per_thread = blocks.div_ceil(threads) * BLOCK;
    let partials: Vec<Vec<[f64; K]>> = std::thread::scope(|scope| {
        let handles: Vec<_> = y
            .chunks(per_thread)
            .zip(x.chunks(per_thread))
            .map(|(yr, xr)| {
                scope.spawn(move || {
                    yr.chunks(BLOCK)
                        .zip(xr.chunks(BLOCK))
                        .map(|(yb, xb)| block(yb, xb))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
            .collect()
    });
    let mut totals = [CompensatedSum::default(); K];
    for sums in partials.iter().flatten() {
        for (total, &value) in totals.iter_mut().zip(sums) {
            total.add(value);
        }
    }
    totals.map(|t| t.total())
}

/// a of logit P(y) = a + logit(p), p the scores clipped to [`CLIP`, 1 − `CLIP`]: one-parameter
/// Newton on Σ (y − σ(a + logit p)) = 0, which is concave and has a finite root whenever both
/// classes are present. σ(a + logit p) = p·e^a / (p·e^a + 1 − p): no exponential per row.
fn intercept_with_offset(y: &[bool], scores: &[f64], start: f64) -> Option<f64> {
    let positives = y.iter().filter(|&&v| v).count();
    if positives == 0 || positives == y.len() {
        return None;
    }
    let mut a = start;
    for _ in 0..logistic::MAX_ITERATIONS {
        let odds_ratio = a.exp();
        let [score, information] = block_sums(y, scores, |yi, score| {
            let p = score.clamp(CLIP, 1.0 - CLIP);
            let scaled = p * odds_ratio;
            let mu = scaled / (scaled + (1.0 - p));
            [f64::from(u8::from(yi)) - mu, mu * (1.0 - mu)]
        });
        let step = score / information;
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
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut uniform = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        for (n, shift) in [(50, 0.5), (400, 1.5), (3000, 0.2), (20_000, 2.5)] {
            let (mut y, mut x) = (Vec::new(), Vec::new());
            for _ in 0..n {
                let positive = uniform() < 0.37;
                y.push(positive);
                x.push(uniform() * 4.0 - 2.0 + if positive { shift } else { 0.0 });
            }
            let (fast, general) = (
                recalibration_fit(&y, &x, (0.0, 0.0)).unwrap(),
                engine(&y, &x).unwrap(),
            );
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
            assert_eq!(recalibration_fit(y, x, (0.0, 0.0)), None, "{y:?} {x:?}");
            assert_eq!(engine(y, x), None, "{y:?} {x:?}");
        }
    }

    /// The block sums are those of one thread going through the blocks in order, bit for bit,
    /// whatever the threads (here as many as the machine has, on 200 blocks).
    #[test]
    fn block_sums_do_not_depend_on_the_threads() {
        let n = 200 * BLOCK + 17;
        let y: Vec<bool> = (0..n).map(|i| i % 3 == 0).collect();
        let x: Vec<f64> = (0..n).map(|i| ((i * 7919) % 1000) as f64 / 97.0 - 5.0).collect();
        let term = |yi: bool, xi: f64| [f64::from(u8::from(yi)) - 0.3, xi.exp().ln_1p()];
        let mut sequential = [CompensatedSum::default(); 2];
        for (yb, xb) in y.chunks(BLOCK).zip(x.chunks(BLOCK)) {
            let mut block = [0.0_f64; 2];
            for (&yi, &xi) in yb.iter().zip(xb) {
                for (sum, value) in block.iter_mut().zip(term(yi, xi)) {
                    *sum += value;
                }
            }
            for (total, value) in sequential.iter_mut().zip(block) {
                total.add(value);
            }
        }
        let expected = sequential.map(|t| t.total());
        assert_eq!(
            block_sums(&y, &x, term).map(f64::to_bits),
            expected.map(f64::to_bits)
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
