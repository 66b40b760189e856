//! The page of a validation design made of several studies (leave-one-site-out, k-fold
//! cross-validation): one row per study with its validation AUC, a forest plot, and the summary the
//! design calls for (the random-effects summary of the held-out sites; the mean and SD of the folds).

use super::figures::with_interval;
use super::svg::{Forest, ForestRow, RowKind, ticks};
use super::{STYLE, figures};
use fedlnm_shared::stats::meta::{PooledAuc, pooled_auc};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use serde::{Deserialize, Serialize};

/// One study of the design: what it validated on and the AUC it got there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DesignRow {
    /// The held-out site, or the fold.
    pub label: String,
    /// Patients validated on, and those with LNM.
    pub n: u64,
    pub n_positive: u64,
    pub auc: Option<f64>,
    pub ci_lower: Option<f64>,
    pub ci_upper: Option<f64>,
    /// The AUC's DeLong variance.
    pub variance: Option<f64>,
    /// The study's final model (SHA-256).
    pub model_digest: String,
}

/// How the rows are summarised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DesignSummary {
    /// Random-effects meta-analysis (the held-out sites are independent samples of sites).
    RandomEffects,
    /// Mean and sample SD (the folds share the patients' sites: no meta-analysis across them).
    MeanAndSd,
}

/// The mean and sample SD of the rows' AUCs; `None` below two rows with an AUC.
#[must_use]
pub fn mean_and_sd(rows: &[DesignRow]) -> Option<(f64, f64)> {
    let aucs: Vec<f64> = rows.iter().filter_map(|row| row.auc).collect();
    let mean = fedlnm_shared::stats::sum::mean(&aucs)?;
    Some((mean, fedlnm_shared::stats::sum::sample_variance(&aucs)?.sqrt()))
}

/// The random-effects summary of the rows' AUCs (logit scale, REML, Knapp–Hartung), as the study
/// report computes it for sites.
#[must_use]
pub fn random_effects(rows: &[DesignRow]) -> Option<PooledAuc> {
    let input: Vec<_> = rows
        .iter()
        .map(|row| (row.label.clone(), row.auc, row.variance))
        .collect();
    pooled_auc(&input)
        .ok()
        .filter(|pooled| pooled.logit.sites.len() >= 2)
}

/// The design's page: `title`, a paragraph saying what was done, the table, the forest plot and the
/// summary; self-contained like the study report.
#[must_use]
pub fn design_page(title: &str, note: &str, rows: &[DesignRow], summary: DesignSummary) -> String {
    let pooled = (summary == DesignSummary::RandomEffects)
        .then(|| random_effects(rows))
        .flatten();
    let mean = (summary == DesignSummary::MeanAndSd)
        .then(|| mean_and_sd(rows))
        .flatten();
    let mut forest_rows: Vec<ForestRow> = rows
        .iter()
        .filter_map(|row| {
            Some(ForestRow {
                label: format!("{} (n = {})", row.label, row.n),
                estimate: row.auc?,
                lower: row.ci_lower?,
                upper: row.ci_upper?,
                text: with_interval(row.auc?, row.ci_lower?, row.ci_upper?),
                kind: RowKind::Estimate,
            })
        })
        .collect();
    if let Some(pooled) = &pooled {
        forest_rows.push(figures::summary_row("Random effects", pooled));
    }
    let low = (rows.iter().filter_map(|row| row.ci_lower).fold(0.5_f64, f64::min) * 10.0)
        .floor()
        .max(0.0)
        / 10.0;
    let forest = Forest {
        id: "design-forest",
        title,
        x_label: "AUC (DeLong 95% CI)",
        log_scale: false,
        x: (low, 1.0),
        ticks: ticks(low, 1.0, 0.1),
        tick_decimals: 1,
        reference: Some(0.5),
        rows: forest_rows,
    }
    .render();
    let markup: Markup = html! {
        (DOCTYPE)
        html lang="en" {
            head { meta charset="utf-8"; title { (title) } style { (PreEscaped(STYLE)) } }
            body {
                h1 { (title) }
                p class="note" { (note) }
                table class="design" {
                    thead { tr { th { "validated on" } th { "n" } th { "with LNM" } th { "AUC (95% CI)" } th { "model" } } }
                    tbody {
                        @for row in rows {
                            tr data-label=(row.label) { td { (row.label) } td { (row.n) } td { (row.n_positive) }
                                td { (match (row.auc, row.ci_lower, row.ci_upper) {
                                    (Some(auc), Some(l), Some(u)) => with_interval(auc, l, u),
                                    (Some(auc), _, _) => format!("{auc:.3}"),
                                    _ => "—".to_owned(),
                                }) }
                                td { code { (row.model_digest.get(..12).unwrap_or(&row.model_digest)) } } }
                        }
                        @if let Some(p) = &pooled {
                            tr class="pooled" { td { "random-effects summary (k = " (p.logit.sites.len()) ")" }
                                td {} td {} td { (with_interval(p.auc, p.ci_lower, p.ci_upper)) }
                                td { (match (p.prediction_lower, p.prediction_upper) {
                                    (Some(l), Some(u)) => format!("prediction interval {l:.3}–{u:.3}; I² = {:.0}%", 100.0 * p.logit.i2),
                                    _ => format!("I² = {:.0}%", 100.0 * p.logit.i2),
                                }) } }
                        }
                        @if let Some((mean, sd)) = mean {
                            tr class="pooled" { td { "mean (SD) over " (rows.len()) " folds" } td {} td {}
                                td { (format!("{mean:.3} ({sd:.3})")) } td {} }
                        }
                    }
                }
                (forest)
            }
        }
    };
    markup.into_string()
}

/// One site's paired comparison of two models on its own patients (the paired DeLong test).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComparisonRow {
    pub site: String,
    /// Patients both models were validated on, and those with LNM.
    pub n: u64,
    pub n_positive: u64,
    pub auc_a: f64,
    pub auc_b: f64,
    /// AUC(a) − AUC(b), its DeLong SE, 95% CI and two-sided p.
    pub delta: f64,
    pub se: Option<f64>,
    pub ci_lower: Option<f64>,
    pub ci_upper: Option<f64>,
    pub p: Option<f64>,
}

/// The comparison of model `a` with model `b` at every site, and its random-effects summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// `multimodal − image-only`.
    pub label: String,
    pub rows: Vec<ComparisonRow>,
}

impl Comparison {
    /// The random-effects summary of the sites' ΔAUC on the identity scale (REML, Knapp–Hartung);
    /// sites without a positive SE are left out. `None` below two sites.
    #[must_use]
    pub fn pooled(&self) -> Option<fedlnm_shared::stats::meta::RandomEffects> {
        let sites: Vec<fedlnm_shared::stats::meta::SiteEstimate> = self
            .rows
            .iter()
            .filter_map(|row| {
                let se = row.se.filter(|se| *se > 0.0 && se.is_finite())?;
                Some(fedlnm_shared::stats::meta::SiteEstimate {
                    site: row.site.clone(),
                    estimate: row.delta,
                    variance: se * se,
                })
            })
            .collect();
        fedlnm_shared::stats::meta::random_effects(&sites).ok()
    }
}

/// The page of a model comparison: per comparison, each site's ΔAUC with its CI and p, a forest plot
/// around 0, and the random-effects summary with its prediction interval.
#[must_use]
pub fn comparison_page(title: &str, note: &str, comparisons: &[Comparison]) -> String {
    let signed = |value: f64| format!("{:+.3}", value + 0.0);
    let markup: Markup = html! {
        (DOCTYPE)
        html lang="en" {
            head { meta charset="utf-8"; title { (title) } style { (PreEscaped(STYLE)) } }
            body {
                h1 { (title) }
                p class="note" { (note) }
                @for (index, comparison) in comparisons.iter().enumerate() {
                    @let pooled = comparison.pooled();
                    h2 { "ΔAUC: " (comparison.label) }
                    table class="comparison" {
                        thead { tr { th { "site" } th { "n" } th { "AUC a" } th { "AUC b" } th { "ΔAUC (95% CI)" } th { "p" } } }
                        tbody {
                            @for row in &comparison.rows {
                                tr data-site=(row.site) { td { (row.site) } td { (row.n) }
                                    td { (format!("{:.3}", row.auc_a)) } td { (format!("{:.3}", row.auc_b)) }
                                    td { (match (row.ci_lower, row.ci_upper) {
                                        (Some(l), Some(u)) => format!("{} ({} to {})", signed(row.delta), signed(l), signed(u)),
                                        _ => signed(row.delta),
                                    }) }
                                    td { (row.p.map_or_else(|| "—".to_owned(), |p| if p < 0.001 { "<0.001".to_owned() } else { format!("{p:.3}") })) } }
                            }
                            @if let Some(p) = &pooled {
                                tr class="pooled" { td { "random-effects summary (k = " (p.sites.len()) ")" } td {} td {} td {}
                                    td { (format!("{} ({} to {})", signed(p.estimate), signed(p.ci_lower), signed(p.ci_upper))) }
                                    td { (match (p.prediction_lower, p.prediction_upper) {
                                        (Some(l), Some(u)) => format!("prediction interval {} to {}; I² = {:.0}%", signed(l), signed(u), 100.0 * p.i2),
                                        _ => format!("I² = {:.0}%", 100.0 * p.i2),
                                    }) } }
                            }
                        }
                    }
                    (comparison_forest(comparison, pooled.as_ref(), index))
                }
            }
        }
    };
    markup.into_string()
}

fn comparison_forest(
    comparison: &Comparison,
    pooled: Option<&fedlnm_shared::stats::meta::RandomEffects>,
    index: usize,
) -> Markup {
    let signed = |value: f64| format!("{:+.3}", value + 0.0);
    let mut rows: Vec<ForestRow> = comparison
        .rows
        .iter()
        .filter_map(|row| {
            Some(ForestRow {
                label: format!("{} (n = {})", row.site, row.n),
                estimate: row.delta,
                lower: row.ci_lower?,
                upper: row.ci_upper?,
                text: format!(
                    "{} ({} to {})",
                    signed(row.delta),
                    signed(row.ci_lower?),
                    signed(row.ci_upper?)
                ),
                kind: RowKind::Estimate,
            })
        })
        .collect();
    if let Some(p) = pooled {
        rows.push(ForestRow {
            label: format!(
                "Random effects (k = {}, I² = {:.0}%)",
                p.sites.len(),
                100.0 * p.i2
            ),
            estimate: p.estimate,
            lower: p.ci_lower,
            upper: p.ci_upper,
            text: format!(
                "{} ({} to {})",
                signed(p.estimate),
                signed(p.ci_lower),
                signed(p.ci_upper)
            ),
            kind: RowKind::Summary {
                prediction: p.prediction_lower.zip(p.prediction_upper),
            },
        });
    }
    let widest = rows
        .iter()
        .flat_map(|row| [row.lower.abs(), row.upper.abs()])
        .fold(0.1_f64, f64::max);
    let half = ((widest * 10.0).ceil() / 10.0).min(1.0);
    let id = format!("comparison-forest-{index}");
    Forest {
        id: &id,
        title: "Forest plot of the sites' ΔAUC",
        x_label: "ΔAUC (paired DeLong 95% CI; summary: Knapp–Hartung CI and prediction interval)",
        log_scale: false,
        x: (-half, half),
        ticks: ticks(-half, half, if half > 0.4 { 0.2 } else { 0.1 }),
        tick_decimals: 1,
        reference: Some(0.0),
        rows,
    }
    .render()
}
