//! Calibration and clinical utility (TRIPOD+AI 23a): each site's calibration intercept and slope with
//! the random-effects summary of the slopes, the pools' calibration plots and decision curves (from
//! their secure sums of score histograms), and each site's own calibration groups and decision curve,
//! which the site reports with its metrics.

use super::figures::{self, PoolFigures, site_colour};
use super::section;
use super::sections::cell;
use crate::format::fixed;
use fedlnm_shared::federation::{RoundRecord, decision_thresholds};
use fedlnm_shared::stats::Z_95;
use fedlnm_shared::stats::binary::{NetBenefit, treat_all_net_benefit};
use fedlnm_shared::stats::calibration::CalibrationBin;
use fedlnm_shared::stats::meta::{self, RandomEffects, SiteEstimate};
use maud::{Markup, html};

/// Each site's figures from the curves it reported with its metrics of the last round (sites
/// without curves, as in older records, are left out).
pub(super) fn site_figures(record: &RoundRecord) -> Vec<PoolFigures> {
    record
        .sites
        .iter()
        .enumerate()
        .filter_map(|(index, site)| {
            let curves = site.curves.as_ref()?;
            let prevalence = site.lnm_rate;
            Some(PoolFigures {
                name: site.site.clone(),
                role: site.role,
                sites: vec![site.site.clone()],
                metrics: None,
                roc: Vec::new(),
                calibration: curves
                    .calibration
                    .iter()
                    .map(|group| CalibrationBin {
                        n: group.n,
                        mean_predicted: group.mean_predicted,
                        observed_rate: group.observed_rate,
                    })
                    .collect(),
                decision: decision_thresholds()
                    .into_iter()
                    .zip(&curves.net_benefit)
                    .map(|(threshold, &model)| NetBenefit {
                        threshold,
                        model,
                        treat_all: treat_all_net_benefit(prevalence, threshold),
                    })
                    .collect(),
                colour: site_colour(index),
            })
        })
        .collect()
}

/// A slope with its 95% CI (slope ∓ z·SE), or the slope alone, or a dash.
fn slope_with_ci(slope: Option<f64>, se: Option<f64>) -> String {
    match (slope, se) {
        (Some(b), Some(se)) => format!("{b:.3} ({:.3}–{:.3})", b - Z_95 * se, b + Z_95 * se),
        (Some(b), None) => format!("{b:.3}"),
        _ => "—".to_owned(),
    }
}

/// The random-effects summary of the sites' calibration slopes (identity scale, weights 1/SE²);
/// `None` below two sites with a slope and an SE.
fn pooled_slope(record: &RoundRecord) -> Option<RandomEffects> {
    let sites: Vec<SiteEstimate> = record
        .sites
        .iter()
        .filter_map(|site| {
            let se = site.calibration_slope_se.filter(|se| *se > 0.0)?;
            Some(SiteEstimate {
                site: site.site.clone(),
                estimate: site.calibration_slope?,
                variance: se * se,
            })
        })
        .collect();
    meta::random_effects(&sites).ok()
}

pub(super) fn calibration(record: &RoundRecord, pools: &[PoolFigures], sites: &[PoolFigures]) -> Markup {
    let slopes = pooled_slope(record);
    section(
        "calibration",
        "TRIPOD+AI 23a",
        html! {
            p class="note" { "Calibration intercept and slope: logistic recalibration logit P(LNM) = a + b·logit(s) "
                "(ideal: a = 0, b = 1), the slope with its Wald 95% CI. Per site on its own scores; the sites' "
                "slopes summarised by random effects (REML, Knapp–Hartung CI); pooled rows on the binned "
                "scores of the pool. The first plot shows deciles of predicted risk of each pool, the second "
                "each site's deciles, which the site reports with its metrics." }
            table class="calibration" {
                thead { tr { th { "site" } th { "role" } th { "intercept" } th { "slope (95% CI)" } } }
                tbody {
                    @for site in &record.sites {
                        tr { td { (site.site) } td { (site.role) } (cell(fixed(site.calibration_intercept)))
                             (cell(slope_with_ci(site.calibration_slope, site.calibration_slope_se))) }
                    }
                    @if let Some(p) = &slopes {
                        tr class="pooled" { td { "random-effects summary of the slopes (k = " (p.sites.len()) ")" }
                            td { (format!("I² = {:.0}%", 100.0 * p.i2)) } td {}
                            td { (format!("{:.3} ({:.3}–{:.3})", p.estimate, p.ci_lower, p.ci_upper)) } }
                    }
                    @for pool in pools {
                        @if let Some(m) = &pool.metrics {
                            tr class="pooled" { td { (pool.name) } td { (pool.role) }
                                (cell(fixed(m.calibration.calibration_intercept)))
                                (cell(slope_with_ci(m.calibration.calibration_slope, m.calibration.calibration_slope_se))) }
                        }
                    }
                }
            }
            (figures::calibration_chart(pools))
            @if !sites.is_empty() {
                (figures::calibration_figure("calibration-sites", "Calibration per site: observed against predicted LNM risk", sites))
            }
        },
    )
}

pub(super) fn decision(pools: &[PoolFigures], sites: &[PoolFigures]) -> Markup {
    let shown = [0.1, 0.2, 0.3, 0.4, 0.5];
    section(
        "decision",
        "TRIPOD+AI 23a",
        html! {
            p class="note" { "Net benefit NB(p_t) = TP/n − FP/n · p_t/(1 − p_t), predicting LNM when the score "
                "is at least p_t, from the pool's summed counts at each threshold (Vickers & Elkin 2006), "
                "against treating all and treating none; per site from its own counts, which it reports with its "
                "metrics." }
            table class="net-benefit" {
                thead { tr { th { "pool" } @for t in shown { th { "p_t = " (t) } } } }
                tbody {
                    @for pool in pools.iter().chain(sites).filter(|pool| !pool.decision.is_empty()) {
                        tr { td { (pool.name) ": model" }
                            @for t in shown {
                                td { (pool.decision.iter().find(|p| (p.threshold - t).abs() < 1e-9)
                                    .map_or_else(|| "—".to_owned(), |p| format!("{:.3}", p.model))) }
                            } }
                        tr { td { (pool.name) ": treat all" }
                            @for t in shown {
                                td { (pool.decision.iter().find(|p| (p.threshold - t).abs() < 1e-9)
                                    .map_or_else(|| "—".to_owned(), |p| format!("{:.3}", p.treat_all))) }
                            } }
                    }
                }
            }
            (figures::decision_chart(pools))
            @if !sites.is_empty() {
                (figures::decision_figure("decision-sites", "Decision curves per site: net benefit of the model", sites, false))
            }
        },
    )
}
