//! What the HTML report's figures show, computed from the committed rounds: the pooled ROC curves
//! with their Youden points, calibration groups and decision curves (from the pools' secure sums of
//! score histograms), the forest plot of the sites' AUCs with their random-effects summaries, the
//! odds-ratio forest plots and AUC by round.

use super::svg::{Forest, ForestRow, LineChart, Marked, RowKind, Series, ticks};
use crate::POOLED_TRAIN;
use crate::pools::pools;
use fedlnm_shared::analysis::AnalysisResult;
use fedlnm_shared::config::SiteRole;
use fedlnm_shared::federation::{RoundRecord, ScoreHistogram, SiteRoundMetrics, SiteValidation};
use fedlnm_shared::stats::binary::{self, BinaryMetrics, NetBenefit, RocPoint};
use fedlnm_shared::stats::calibration::{CalibrationBin, calibration_bins};
use fedlnm_shared::stats::meta::{PooledAuc, pooled_auc};
use maud::Markup;

use fedlnm_shared::federation::{CALIBRATION_GROUPS, decision_thresholds};

/// Everything the report shows of one pool (or of one site's own patients, on its own page),
/// computed once from its histogram.
pub(super) struct PoolFigures {
    pub(super) name: String,
    pub(super) role: SiteRole,
    pub(super) sites: Vec<String>,
    pub(super) metrics: Option<BinaryMetrics>,
    pub(super) roc: Vec<RocPoint>,
    pub(super) calibration: Vec<CalibrationBin>,
    pub(super) decision: Vec<NetBenefit>,
    /// Its curves' colour.
    pub(super) colour: String,
}

impl PoolFigures {
    /// The figures of `histogram`. Without both classes there are no metrics, curve or calibration
    /// groups (the tables say they are undefined).
    fn from_histogram(name: &str, role: SiteRole, sites: Vec<String>, histogram: &ScoreHistogram) -> Self {
        let (y, s) = histogram.rows();
        let both = histogram.n_positive() > 0 && histogram.n_negative() > 0;
        Self {
            colour: pool_colour(name),
            name: name.to_owned(),
            role,
            sites,
            metrics: both.then(|| binary::binary_metrics(&y, &s).ok()).flatten(),
            roc: if both {
                binary::roc_curve(&y, &s).unwrap_or_default()
            } else {
                Vec::new()
            },
            calibration: if both {
                calibration_bins(&y, &s, CALIBRATION_GROUPS)
            } else {
                Vec::new()
            },
            decision: if y.is_empty() {
                Vec::new()
            } else {
                binary::net_benefit(&y, &s, &decision_thresholds()).unwrap_or_default()
            },
        }
    }

    /// A site's own figures, from the histogram of its own record.
    pub(super) fn of_site(site: &str, record: &SiteValidation) -> Self {
        Self::from_histogram(
            site,
            record.metrics.role,
            vec![site.to_owned()],
            &record.histogram,
        )
    }
}

/// The pools of the last round with their figures' data.
pub(super) fn pool_figures(record: &RoundRecord) -> Vec<PoolFigures> {
    pools(record)
        .map(|(name, role, pool)| {
            PoolFigures::from_histogram(name, role, pool.sites.clone(), &pool.histogram)
        })
        .collect()
}

/// The colour of a pool's curves: black for the training sites' pool, dark grey (dashed) for the
/// validate-only sites' (sites have the colours of [`site_colour`]).
fn pool_colour(name: &str) -> String {
    match name {
        POOLED_TRAIN => "#111111".to_owned(),
        crate::POOLED_VALIDATION => "#666666".to_owned(),
        _ => site_colour(0),
    }
}

/// Distinct colours for sites (Tableau 10), repeated past ten.
pub(super) fn site_colour(index: usize) -> String {
    const COLOURS: [&str; 10] = [
        "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
        "#17becf",
    ];
    COLOURS[index % COLOURS.len()].to_owned()
}

/// The pools' ROC curves, each with its Youden point (the observed bin-centre threshold where
/// sensitivity + specificity − 1 is largest).
pub(super) fn roc_chart(pools: &[PoolFigures]) -> Markup {
    let mut series = Vec::new();
    let mut marked = Vec::new();
    for pool in pools.iter().filter(|pool| !pool.roc.is_empty()) {
        let colour = pool.colour.clone();
        let mut label = if pool.sites == [pool.name.clone()] {
            pool.name.clone()
        } else {
            format!("{} ({})", pool.name, pool.sites.join(", "))
        };
        if let Some(metrics) = &pool.metrics
            && let (Some(threshold), Some(sensitivity), Some(specificity)) = (
                metrics.youden_threshold,
                metrics.youden_sensitivity,
                metrics.youden_specificity,
            )
        {
            let youden = format!(
                "Youden threshold {threshold:.3}: sensitivity {:.1}%, specificity {:.1}%",
                100.0 * sensitivity,
                100.0 * specificity
            );
            label = format!("{label}; ○ {youden}");
            marked.push(Marked {
                x: 1.0 - specificity,
                y: sensitivity,
                label: youden,
                colour: colour.clone(),
            });
        }
        series.push(Series {
            label,
            colour,
            dashed: pool.role == SiteRole::Validate,
            markers: false,
            runs: vec![pool.roc.iter().map(|point| (point.fpr, point.tpr)).collect()],
        });
    }
    LineChart {
        marked,
        ..unit_square(
            "roc",
            "Pooled ROC curves with the Youden points",
            ("1 − specificity", "sensitivity"),
            series,
        )
    }
    .render()
}

/// A chart of two probabilities: both axes 0 to 1 in fifths, the diagonal as reference.
fn unit_square<'a>(
    id: &'a str,
    title: &'a str,
    labels: (&'a str, &'a str),
    series: Vec<Series>,
) -> LineChart<'a> {
    LineChart {
        id,
        title,
        x_label: labels.0,
        y_label: labels.1,
        x: (0.0, 1.0),
        y: (0.0, 1.0),
        x_ticks: ticks(0.0, 1.0, 0.2),
        y_ticks: ticks(0.0, 1.0, 0.2),
        x_decimals: 1,
        y_decimals: 1,
        reference: Some([(0.0, 0.0), (1.0, 1.0)]),
        series,
        marked: Vec::new(),
    }
}

/// Observed LNM rate against mean predicted risk, by decile of predicted risk, per pool.
pub(super) fn calibration_chart(pools: &[PoolFigures]) -> Markup {
    calibration_figure(
        "calibration",
        "Calibration: observed against predicted LNM risk",
        pools,
    )
}

/// [`calibration_chart`] under its own id and title (for example one curve per site).
pub(super) fn calibration_figure(id: &str, title: &str, pools: &[PoolFigures]) -> Markup {
    let series = pools
        .iter()
        .filter(|pool| !pool.calibration.is_empty())
        .map(|pool| Series {
            label: format!("{} (deciles of predicted risk)", pool.name),
            colour: pool.colour.clone(),
            dashed: pool.role == SiteRole::Validate,
            markers: true,
            runs: vec![
                pool.calibration
                    .iter()
                    .map(|bin| (bin.mean_predicted, bin.observed_rate))
                    .collect(),
            ],
        })
        .collect();
    unit_square(id, title, ("mean predicted risk", "observed LNM rate"), series).render()
}

/// Net benefit of the model, of treating all and of treating none, on the grid of threshold
/// probabilities, per pool.
pub(super) fn decision_chart(pools: &[PoolFigures]) -> Markup {
    decision_figure(
        "decision",
        "Decision curves: net benefit against threshold probability",
        pools,
        true,
    )
}

/// [`decision_chart`] under its own id and title, with or without each pool's "treat all" curve.
pub(super) fn decision_figure(id: &str, title: &str, pools: &[PoolFigures], treat_all: bool) -> Markup {
    let mut series = Vec::new();
    let mut highest = 0.05_f64;
    for pool in pools.iter().filter(|pool| !pool.decision.is_empty()) {
        let colour = pool.colour.clone();
        let validate = pool.role == SiteRole::Validate;
        highest = pool
            .decision
            .iter()
            .map(|point| point.treat_all.max(point.model))
            .fold(highest, f64::max);
        series.push(Series {
            label: format!("{}: model", pool.name),
            colour: colour.clone(),
            dashed: validate,
            markers: false,
            runs: vec![pool.decision.iter().map(|p| (p.threshold, p.model)).collect()],
        });
        if treat_all {
            series.push(Series {
                label: format!("{}: treat all", pool.name),
                colour: if validate { "#9ecae1" } else { "#aaaaaa" }.to_owned(),
                dashed: validate,
                markers: false,
                runs: vec![pool.decision.iter().map(|p| (p.threshold, p.treat_all)).collect()],
            });
        }
    }
    if !series.is_empty() {
        series.push(Series {
            label: "treat none".to_owned(),
            colour: "#d62728".to_owned(),
            dashed: false,
            markers: false,
            runs: vec![vec![(0.0, 0.0), (1.0, 0.0)]],
        });
    }
    let top = (highest * 10.0).ceil() / 10.0;
    LineChart {
        id,
        title,
        x_label: "threshold probability",
        y_label: "net benefit",
        x: (0.0, 1.0),
        y: (-0.05, top),
        x_ticks: ticks(0.0, 1.0, 0.2),
        y_ticks: ticks(0.0, top, if top > 0.5 { 0.2 } else { 0.1 }),
        x_decimals: 1,
        y_decimals: 1,
        reference: None,
        series,
        marked: Vec::new(),
    }
    .render()
}

/// The random-effects summaries of the sites' AUCs: for each role with at least two sites that
/// have an AUC and a variance, and for all sites together.
pub(super) struct AucSummaries {
    pub(super) internal: Option<PooledAuc>,
    pub(super) external: Option<PooledAuc>,
    pub(super) all: Option<PooledAuc>,
}

/// The meta-analysis of `sites`' AUCs (`None` with fewer than two usable sites).
fn summary<'a>(sites: impl Iterator<Item = &'a SiteRoundMetrics>) -> Option<PooledAuc> {
    let input: Vec<(String, Option<f64>, Option<f64>)> = sites
        .map(|site| (site.site.clone(), site.auc, site.auc_variance))
        .collect();
    pooled_auc(&input)
        .ok()
        .filter(|pooled| pooled.logit.sites.len() >= 2)
}

pub(super) fn auc_summaries(record: &RoundRecord) -> AucSummaries {
    let of_role = |role| summary(record.sites.iter().filter(move |site| site.role == role));
    AucSummaries {
        internal: of_role(SiteRole::Train),
        external: of_role(SiteRole::Validate),
        all: summary(record.sites.iter()),
    }
}

/// `0.812 (0.741–0.883)`.
pub(super) fn with_interval(estimate: f64, lower: f64, upper: f64) -> String {
    format!("{estimate:.3} ({lower:.3}–{upper:.3})")
}

pub(super) fn summary_row(label: &str, pooled: &PooledAuc) -> ForestRow {
    ForestRow {
        label: format!(
            "{label} (k = {}, I² = {:.0}%)",
            pooled.logit.sites.len(),
            100.0 * pooled.logit.i2
        ),
        estimate: pooled.auc,
        lower: pooled.ci_lower,
        upper: pooled.ci_upper,
        text: with_interval(pooled.auc, pooled.ci_lower, pooled.ci_upper),
        kind: RowKind::Summary {
            prediction: pooled.prediction_lower.zip(pooled.prediction_upper),
        },
    }
}

/// The forest plot of the last round's site AUCs (DeLong CIs), grouped by internal and external
/// validation, each group followed by its random-effects summary (diamond: CI, line: prediction
/// interval), and the summary over all sites.
pub(super) fn auc_forest(record: &RoundRecord, summaries: &AucSummaries) -> Markup {
    let mut rows = Vec::new();
    for (role, heading, pooled) in [
        (
            SiteRole::Train,
            "Internal validation (training sites' held-out patients)",
            &summaries.internal,
        ),
        (
            SiteRole::Validate,
            "External validation (validate-only sites)",
            &summaries.external,
        ),
    ] {
        let sites: Vec<&SiteRoundMetrics> = record.sites.iter().filter(|site| site.role == role).collect();
        if sites.is_empty() {
            continue;
        }
        rows.push(ForestRow {
            label: heading.to_owned(),
            estimate: 0.5,
            lower: 0.5,
            upper: 0.5,
            text: String::new(),
            kind: RowKind::Heading,
        });
        for site in sites {
            if let (Some(auc), Some(lower), Some(upper)) = (site.auc, site.auc_ci_lower, site.auc_ci_upper) {
                rows.push(ForestRow {
                    label: format!("{} (n = {})", site.site, site.n_patients),
                    estimate: auc,
                    lower,
                    upper,
                    text: with_interval(auc, lower, upper),
                    kind: RowKind::Estimate,
                });
            }
        }
        if let Some(pooled) = pooled {
            rows.push(summary_row("Random effects", pooled));
        }
    }
    if let Some(all) = &summaries.all {
        rows.push(summary_row("All sites, random effects", all));
    }
    // From 0.5 (or the lowest site limit) to 1, in tenths: a summary's CI wider than that (two
    // sites) ends at the axis and its numbers stand on the right.
    let lowest = rows
        .iter()
        .filter(|row| matches!(row.kind, RowKind::Estimate))
        .map(|row| row.lower)
        .fold(0.5_f64, f64::min);
    let low = (lowest * 10.0).floor().max(0.0) / 10.0;
    Forest {
        id: "auc-forest",
        title: "Forest plot of the sites' AUCs with random-effects summaries",
        x_label: "AUC (DeLong 95% CI; summaries: Knapp–Hartung CI and prediction interval)",
        log_scale: false,
        x: (low, 1.0),
        ticks: ticks(low, 1.0, 0.1),
        tick_decimals: 1,
        reference: Some(0.5),
        rows,
    }
    .render()
}

/// The forest plot of an analysis's adjusted odds ratios (log scale), then its crude ones.
pub(super) fn odds_ratio_forest(result: &AnalysisResult, id: &str) -> Markup {
    let mut rows = Vec::new();
    let mut extent = (0.5_f64, 2.0_f64);
    let groups =
        std::iter::once(("Adjusted", &result.adjusted)).chain(result.crude.iter().map(|c| ("Crude", c)));
    let mut last_heading = "";
    for (heading, outcome) in groups {
        // Only the terms with an odds ratio (a separated or failed fit has none).
        let estimates: Vec<(String, f64, f64, f64)> = outcome
            .fit
            .iter()
            .flat_map(|fit| &fit.terms)
            .filter(|term| term.name != "const")
            .filter_map(|term| Some((term.name.clone(), term.or?, term.or_ci_lower?, term.or_ci_upper?)))
            .collect();
        if estimates.is_empty() {
            continue;
        }
        if heading != last_heading {
            rows.push(ForestRow {
                label: format!("{heading} odds ratios"),
                estimate: 1.0,
                lower: 1.0,
                upper: 1.0,
                text: String::new(),
                kind: RowKind::Heading,
            });
            last_heading = heading;
        }
        for (name, or, lower, upper) in estimates {
            extent = (extent.0.min(lower), extent.1.max(upper));
            rows.push(ForestRow {
                label: name,
                estimate: or,
                lower,
                upper,
                text: format!("{or:.2} ({lower:.2}–{upper:.2})"),
                kind: RowKind::Estimate,
            });
        }
    }
    // Ticks at 1, 2, 5, 10, ... and their reciprocals, within [0.1, 100].
    let candidates = [0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0];
    let low = candidates
        .iter()
        .copied()
        .rev()
        .find(|&c| c <= extent.0)
        .unwrap_or(0.1);
    let high = candidates
        .iter()
        .copied()
        .find(|&c| c >= extent.1)
        .unwrap_or(100.0);
    Forest {
        id,
        title: "Forest plot of the odds ratios",
        x_label: "odds ratio (95% CI, log scale)",
        log_scale: true,
        x: (low, high),
        ticks: candidates
            .iter()
            .copied()
            .filter(|&c| c >= low && c <= high)
            .collect(),
        tick_decimals: 1,
        reference: Some(1.0),
        rows,
    }
    .render()
}

/// AUC by round for each site (in order of first appearance) and each pool.
pub(super) fn auc_by_round_chart(records: &[&RoundRecord]) -> Markup {
    let mut names: Vec<(&str, SiteRole)> = Vec::new();
    for site in records.iter().flat_map(|record| &record.sites) {
        if !names.iter().any(|(name, _)| *name == site.site) {
            names.push((&site.site, site.role));
        }
    }
    let runs = |value_of: &dyn Fn(&RoundRecord) -> Option<f64>| -> Vec<Vec<(f64, f64)>> {
        let mut runs: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
        for record in records {
            match value_of(record) {
                #[allow(clippy::cast_precision_loss)] // Round numbers are small.
                Some(auc) => runs
                    .last_mut()
                    .into_iter()
                    .for_each(|run| run.push((record.round as f64, auc))),
                None => runs.push(Vec::new()),
            }
        }
        runs.retain(|run| !run.is_empty());
        runs
    };
    let mut series: Vec<Series> = names
        .iter()
        .enumerate()
        .map(|(index, (name, role))| Series {
            label: format!("{name} ({role})"),
            colour: site_colour(index),
            dashed: false,
            markers: true,
            runs: runs(&|record| {
                record
                    .sites
                    .iter()
                    .find(|site| site.site == *name)
                    .and_then(|site| site.auc)
            }),
        })
        .collect();
    for (name, train) in [(POOLED_TRAIN, true), (crate::POOLED_VALIDATION, false)] {
        let runs = runs(&|record| {
            let pool = if train {
                &record.pooled_train_sites
            } else {
                &record.pooled_validation_sites
            };
            pool.as_ref().and_then(|pool| pool.auc)
        });
        if !runs.is_empty() {
            series.push(Series {
                label: name.to_owned(),
                colour: pool_colour(name),
                dashed: name != POOLED_TRAIN,
                markers: true,
                runs,
            });
        }
    }
    #[allow(clippy::cast_precision_loss)] // Round numbers are small.
    let last = records.last().map_or(1.0, |record| record.round as f64).max(1.0);
    let lowest = series
        .iter()
        .flat_map(|s| s.runs.iter().flatten())
        .map(|point| point.1)
        .fold(0.5_f64, f64::min);
    let low = ((lowest - 0.05) * 10.0).floor().max(0.0) / 10.0;
    let step = (last / 10.0).ceil().max(1.0);
    LineChart {
        id: "auc-by-round",
        title: "AUC by round",
        x_label: "round",
        y_label: "AUC",
        x: (-0.3, last + 0.3),
        y: (low, 1.0),
        x_ticks: ticks(0.0, last, step),
        y_ticks: ticks(low, 1.0, 0.1),
        x_decimals: 0,
        y_decimals: 1,
        reference: Some([(-0.3, 0.5), (last + 0.3, 0.5)]),
        series,
        marked: Vec::new(),
    }
    .render()
}
