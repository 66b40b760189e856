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
