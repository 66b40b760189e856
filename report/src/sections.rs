//! The sections of the HTML report, in page order; each states what its numbers are.

use super::figures::{self, AucSummaries, PoolFigures};
use super::participants;
use super::utility;
use super::{LiveStatus, SECTIONS, section};
use crate::format::{fixed, percent};
use crate::pools::pools;
use fedlnm_shared::analysis::{AnalysisResult, FitOutcome};
use fedlnm_shared::config::SiteRole;
use fedlnm_shared::federation::{RoundRecord, STAGE_SCALES, SiteRoundMetrics};
use fedlnm_shared::stats::Z_95;
use fedlnm_shared::stats::logistic::{FitStatus, SeparationKind};
use fedlnm_shared::stats::meta::PooledAuc;
use fedlnm_shared::stats::wilson_interval;
use maud::{Markup, html};

/// Every section of the report for the last committed round `record`.
pub(super) fn all(records: &[&RoundRecord], record: &RoundRecord, analyses: &[AnalysisResult]) -> Markup {
    let pools = figures::pool_figures(record);
    let sites = utility::site_figures(record);
    let summaries = figures::auc_summaries(record);
    html! {
        (participants::participants(record, &pools))
        (discrimination(record, &pools))
        (heterogeneity(record, &summaries))
        (section("roc", "TRIPOD+AI 23a", html! {
            p class="note" { "Pooled over the patients of each pool (the secure sum of its sites' score "
                "histograms, scores binned at 10⁻⁴); a site's own curve never leaves it. The circle marks "
                "the Youden-optimal threshold." }
            (figures::roc_chart(&pools))
        }))
        (utility::calibration(record, &pools, &sites))
        (utility::decision(&pools, &sites))
        (stage(record))
        (odds_ratios(analyses))
        (rounds(records))
        (privacy(record))
        (methods(record))
        (checklist())
    }
}

/// The live status page's block: the round in progress and when each site was last seen.
pub(super) fn live(live: &LiveStatus) -> Markup {
    html! {
        section id="live" class="live" {
            h2 { "Study status" }
            p { strong { (live.progress) } " · this page reloads every " (live.refresh_seconds) " s" }
            table class="sites-seen" {
                thead { tr { th { "site" } th { "role" } th { "last request" } } }
                tbody {
                    @for (site, role, seconds) in &live.sites {
                        tr {
                            td { (site) } td { (role) }
                            td { @match seconds {
                                Some(seconds) => { (format!("{seconds:.0} s ago")) },
                                None => { "not since the aggregator started" },
                            } }
                        }
                    }
                }
            }
        }
    }
}

/// A table cell: the value, or a grey dash when undefined.
pub(super) fn cell(value: String) -> Markup {
    if value == "—" {
        html! { td class="undefined" { "—" } }
    } else {
        html! { td { (value) } }
    }
}

pub(super) fn rate_with_ci(events: u64, n: u64) -> String {
    match wilson_interval(events, n) {
        #[allow(clippy::cast_precision_loss)] // Patient counts.
        Some((lower, upper)) => format!(
            "{:.1}% ({:.1}–{:.1})",
            100.0 * events as f64 / n as f64,
            100.0 * lower,
            100.0 * upper
        ),
        None => "—".to_owned(),
    }
}

pub(super) fn role_name(role: SiteRole) -> &'static str {
    match role {
        SiteRole::Train => "training (internal validation)",
        SiteRole::Validate => "validate-only (external)",
    }
}

fn auc_cell(auc: Option<f64>, lower: Option<f64>, upper: Option<f64>) -> Markup {
    cell(match auc {
        Some(_) => crate::format::auc_with_ci(auc, lower, upper),
        None => "—".to_owned(),
    })
}

fn discrimination(record: &RoundRecord, pools: &[PoolFigures]) -> Markup {
    section(
        "discrimination",
        "TRIPOD+AI 23a; TRIPOD-Cluster 13a",
        html! {
            p class="note" { "AUC with its DeLong 95% CI; sensitivity and specificity at the Youden-optimal "
                "threshold of each site's own scores. Pooled rows: all patients of the pool from the secure "
                "sum of score histograms (not an average of sites)." }
            table class="discrimination" {
                thead { tr { th { "site" } th { "role" } th { "n" } th { "AUC (95% CI)" } th { "threshold" }
                    th { "sensitivity" } th { "specificity" } th { "Brier" } } }
                tbody { (discrimination_rows(&record.sites, pools)) }
            }
        },
    )
}

/// The discrimination table's rows: each site, then each pool.
pub(super) fn discrimination_rows(sites: &[SiteRoundMetrics], pools: &[PoolFigures]) -> Markup {
    html! {
        @for site in sites {
            tr data-site=(site.site) { td { (site.site) } td { (site.role) } td { (site.n_patients) }
                (auc_cell(site.auc, site.auc_ci_lower, site.auc_ci_upper))
                (cell(fixed(site.youden_threshold))) (cell(percent(site.sensitivity)))
                (cell(percent(site.specificity))) (cell(fixed(Some(site.brier)))) }
        }
        @for pool in pools {
            @if let Some(m) = &pool.metrics {
                tr class="pooled" { td { (pool.name) } td { (pool.role) } td { (m.n) }
                    (auc_cell(m.auc, m.auc_ci_lower, m.auc_ci_upper))
                    (cell(fixed(m.youden_threshold))) (cell(percent(m.youden_sensitivity)))
                    (cell(percent(m.youden_specificity))) (cell(fixed(Some(m.brier)))) }
            }
        }
    }
}

fn summary_cells(label: &str, pooled: Option<&PooledAuc>) -> Markup {
    html! {
        @if let Some(p) = pooled {
            tr { td { (label) } td { (p.logit.sites.len()) }
                td { (format!("{:.3} ({:.3}–{:.3})", p.auc, p.ci_lower, p.ci_upper)) }
                (cell(match (p.prediction_lower, p.prediction_upper) {
                    (Some(l), Some(u)) => format!("{l:.3}–{u:.3}"),
                    _ => "—".to_owned(),
                }))
                td { (format!("{:.4}", p.logit.tau2)) } td { (format!("{:.4}", p.logit.tau2_dersimonian_laird)) }
                td { (format!("{:.2}", p.logit.q)) } td { (format!("{:.0}%", 100.0 * p.logit.i2)) }
                (cell(if p.left_out.is_empty() { "—".to_owned() } else { p.left_out.join(", ") })) }
        }
    }
}

fn heterogeneity(record: &RoundRecord, summaries: &AucSummaries) -> Markup {
    section(
        "heterogeneity",
        "TRIPOD+AI 23b; TRIPOD-Cluster 13b",
        html! {
            p class="note" { "Random-effects meta-analysis of the sites' AUCs on the logit scale (delta-method "
                "variances from DeLong), REML τ², Knapp–Hartung 95% CI, 95% prediction interval for a new "
                "site (t with k − 2 degrees of freedom), Cochran's Q and I². This summary of sites is not the "
                "pooled AUC of all patients (the pooled rows of the discrimination table); both are reported." }
            @if summaries.all.is_none() {
                p { "Fewer than two sites have an AUC with a variance: no summary across sites." }
            }
            table class="meta-analysis" {
                thead { tr { th { "sites" } th { "k" } th { "summary AUC (95% CI)" } th { "prediction interval" }
                    th { "τ² (REML)" } th { "τ² (DL)" } th { "Q" } th { "I²" } th { "left out" } } }
                tbody {
                    (summary_cells("internal validation", summaries.internal.as_ref()))
                    (summary_cells("external validation", summaries.external.as_ref()))
                    (summary_cells("all sites", summaries.all.as_ref()))
                }
            }
            (figures::auc_forest(record, summaries))
        },
    )
}

/// κ with its 95% CI (κ ∓ z·SE, not clipped), or a dash.
pub(super) fn kappa_with_ci(kappa: Option<f64>, se: Option<f64>) -> String {
    match (kappa, se) {
        // `+ 0.0` writes a negative zero (κ = 0 with SE 0) as 0.000.
        (Some(kappa), Some(se)) => format!(
            "{:.3} ({:.3} to {:.3})",
            kappa + 0.0,
            kappa - Z_95 * se + 0.0,
            kappa + Z_95 * se + 0.0
        ),
        (Some(kappa), None) => format!("{kappa:.3}"),
        _ => "—".to_owned(),
    }
}

/// One pooled confusion matrix: rows pathology, columns prediction, the diagonal marked.
pub(super) fn confusion_table(scale: &str, labels: &[&str], rows: &[Vec<u64>]) -> Markup {
    html! {
        table class="confusion" data-scale=(scale) {
            thead { tr { th { "pathological ↓ / predicted →" } @for label in labels { th { (label) } } } }
            tbody {
                @for (i, row) in rows.iter().enumerate() {
                    tr { th { (labels.get(i).copied().unwrap_or("?")) }
                        @for (j, count) in row.iter().enumerate() {
                            td class=[(i == j).then_some("diagonal")] { (count) }
                        } }
                }
            }
        }
    }
}

fn stage(record: &RoundRecord) -> Markup {
    section(
        "stage",
        "TRIPOD+AI 23a",
        html! {
            p class="note" { "Quadratic-weighted Cohen's κ of the model-predicted against the pathological "
                "category, on the declared AJCC 8th scales (T: 7 categories, N: 3, overall stage: 5; the "
                "stage derived from predicted T and N by the age-55 rule), with the 95% CI κ ∓ 1.96·SE "
                "(Fleiss, Cohen & Everitt 1969; not clipped)." }
            table class="kappa" {
                thead { tr { th { "site" } th { "role" } th { "n" } th { "κ T (95% CI)" } th { "κ N (95% CI)" }
                    th { "κ stage (95% CI)" } } }
                tbody {
                    @for site in &record.sites {
                        tr { td { (site.site) } td { (site.role) } td { (site.n_patients) }
                            (cell(kappa_with_ci(site.kappa_t, site.kappa_t_se)))
                            (cell(kappa_with_ci(site.kappa_n, site.kappa_n_se)))
                            (cell(kappa_with_ci(site.kappa_stage, site.kappa_stage_se))) }
                    }
                    @for (name, _, pool) in pools(record) {
                        @if let Some(confusion) = &pool.stage_confusion {
                            @let [t, n, stage] = confusion.quadratic_kappas();
                            tr class="pooled" { td { (name) } td { (pool.sites.join(", ")) } td { (pool.n_patients) }
                                (cell(kappa_with_ci(t.kappa, t.se))) (cell(kappa_with_ci(n.kappa, n.se)))
                                (cell(kappa_with_ci(stage.kappa, stage.se))) }
                        }
                    }
                }
            }
            @for (name, _, pool) in pools(record) {
                @if let Some(confusion) = &pool.stage_confusion {
                    h3 { "Confusion matrices, " (name) " (" (pool.sites.join(", ")) "; secure sum)" }
                    div class="confusions" {
                        @for (index, (scale, labels)) in STAGE_SCALES.iter().enumerate() {
                            (confusion_table(scale, labels, &confusion.rows(index)))
                        }
                    }
                }
            }
        },
    )
}

/// Why a fit gives no odds ratio, or `None` when it is `ok`.
fn no_fit(outcome: &FitOutcome) -> Option<String> {
    match (&outcome.fit, &outcome.error) {
        (Some(fit), _) if fit.status == FitStatus::Ok => None,
        (Some(fit), _) => Some(format!(
            "{}: no finite odds ratio exists for this model; none is reported{}",
            if fit.status == FitStatus::Separation {
                "separation"
            } else {
                "not converged"
            },
            fit.separation
                .as_ref()
                .map_or_else(String::new, |separation| format!(
                    " ({} separation along {}; {} patients predicted perfectly)",
                    match separation.kind {
                        SeparationKind::Complete => "complete",
                        SeparationKind::QuasiComplete => "quasi-complete",
                    },
                    separation.terms.join(", "),
                    separation.n_boundary
                ))
        )),
        (None, Some(error)) => Some(format!("no fit: {error}")),
        (None, None) => Some("no fit".to_owned()),
    }
}

/// `OR (CI)` and `p` of `term` in a fit that is `ok`; dashes otherwise.
fn or_cells(outcome: &FitOutcome, term: &str) -> Markup {
    let estimate = outcome
        .fit
        .as_ref()
        .filter(|fit| fit.status == FitStatus::Ok)
        .and_then(|fit| fit.terms.iter().find(|t| t.name == term));
    let or = estimate.and_then(|t| {
        Some(format!(
            "{:.2} ({:.2}–{:.2})",
            t.or?, t.or_ci_lower?, t.or_ci_upper?
        ))
    });
    let p = estimate.and_then(|t| t.p).map(|p| {
        if p < 0.001 {
            "<0.001".to_owned()
        } else {
            format!("{p:.3}")
        }
    });
    html! { (cell(or.unwrap_or_else(|| "—".to_owned()))) (cell(p.unwrap_or_else(|| "—".to_owned()))) }
}

/// One table of the analysis's terms: crude (one term each) and adjusted odds ratios side by side.
fn or_table(result: &AnalysisResult) -> Markup {
    html! {
        table class="odds-ratios" {
            thead { tr { th { "term" } th { "crude OR (95% CI)" } th { "p" } th { "adjusted OR (95% CI)" } th { "p" } } }
            tbody {
                @for (term, crude) in result.analysis.terms.iter().zip(&result.crude) {
                    // A categorical term has one row per dummy (`<term>_<level>`).
                    @let names: Vec<String> = result.adjusted.fit.as_ref().map_or_else(Vec::new, |fit| fit.terms
                        .iter().map(|t| t.name.clone()).filter(|n| n == term || n.starts_with(&format!("{term}_"))).collect());
                    @for name in if names.is_empty() { vec![term.clone()] } else { names } {
                        tr data-term=(name) { td { (name) } (or_cells(crude, &name)) (or_cells(&result.adjusted, &name)) }
                    }
                }
            }
        }
        @if let Some(fit) = result.adjusted.fit.as_ref().filter(|fit| fit.status == FitStatus::Ok) {
            p class="note" { "Adjusted model: n = " (fit.n) ", events = " (fit.n_positive) ", log-likelihood "
                (fixed(fit.loglik)) ", " (fit.iterations) " Newton steps." }
        }
        @for (what, outcome) in std::iter::once(("adjusted model".to_owned(), &result.adjusted))
            .chain(result.analysis.terms.iter().zip(&result.crude).map(|(t, c)| (format!("crude model of {t}"), c))) {
            @if let Some(reason) = no_fit(outcome) { p { strong { (what) } ": " (reason) } }
        }
    }
}

fn odds_ratios(analyses: &[AnalysisResult]) -> Markup {
    section(
        "odds-ratios",
        "registered secondary outcome",
        html! {
            @if analyses.is_empty() {
                p { "No analysis of clinical factors has been run (configure [[analysis]] in aggregator.toml)." }
            }
            @for (index, result) in analyses.iter().enumerate() {
                h3 { (result.analysis.name) ": " (result.analysis.outcome.name()) " ~ " (result.analysis.terms.join(" + ")) }
                p class="note" { "Federated Newton–Raphson over the study's mTLS channel: each site gave its size "
                    "and events, then answered each Newton step with its sums Xᵀ(y − μ), XᵀWX and log-likelihood "
                    "masked, so that the aggregator saw them only added over the sites (a secure sum in fixed "
                    "point); the fit equals the fit of all rows pooled. Sites with fewer than "
                    (result.analysis.min_site_rows) " labelled patients refuse. " (result.steps) " exchanges." }
                table class="analysis-sites" {
                    thead { tr { th { "site" } th { "n" } th { "events" } th { "rate (Wilson 95% CI)" } } }
                    tbody {
                        @for site in result.sites.iter().chain(&result.pooled) {
                            tr class=[(site.site == "pooled").then_some("pooled")] { td { (site.site) } td { (site.n) } td { (site.events) }
                                td { (format!("{:.1}% ({:.1}–{:.1})", 100.0 * site.rate, 100.0 * site.ci_lower, 100.0 * site.ci_upper)) } }
                        }
                        @for excluded in &result.excluded {
                            tr { td { (excluded.site) } td colspan="3" class="undefined" { "not included: " (excluded.reason) } }
                        }
                    }
                }
                (or_table(result))
                (figures::odds_ratio_forest(result, &format!("or-forest-{index}")))
            }
        },
    )
}

fn rounds(records: &[&RoundRecord]) -> Markup {
    section(
        "rounds",
        "",
        html! {
            (figures::auc_by_round_chart(records))
            table class="rounds" {
                thead { tr { th { "round" } th { "contributors" } th { "dropped" } th { "Σ n" }
                    th { "pooled-train AUC" } th { "pooled-validation AUC" } th { "round s" } } }
                tbody {
                    @for record in records {
                        tr { td { (record.round) } td { (record.contributors.join(", ")) }
                            (cell(if record.dropped.is_empty() { "—".to_owned() } else { record.dropped.join(", ") }))
                            td { (record.total_samples) }
                            (cell(fixed(record.pooled_train_sites.as_ref().and_then(|p| p.auc))))
                            (cell(fixed(record.pooled_validation_sites.as_ref().and_then(|p| p.auc))))
                            td { (format!("{:.1}", record.round_seconds)) } }
                    }
                }
            }
        },
    )
}

fn privacy(record: &RoundRecord) -> Markup {
    section(
        "privacy",
        "",
        html! {
            p { "Model updates: " (crate::format::aggregation_name(record)) " aggregation"
                @if record.aggregation == fedlnm_shared::federation::AggregationKind::Secure {
                    " (Bonawitz secure aggregation: the aggregator saw only the sum of the sites' weighted deltas)"
                } "." }
            @match &record.privacy {
                Some(spent) => p { "Differential privacy (site level): noise multiplier " (spent.noise_multiplier)
                    ", clip norm " (spent.clip_norm) "; ε = " (format!("{:.2}", spent.epsilon_study))
                    " over the study at δ = " (spent.delta) " (Rényi accountant)." },
                None => p { "No differential-privacy noise was added to the model updates." },
            }
        },
    )
}

fn methods(record: &RoundRecord) -> Markup {
    section(
        "methods",
        "TRIPOD+AI 12e",
        html! {
            p { (crate::format::normalisation_statement(record.round, &record.sites)) }
            p { "Discrimination: AUC as the Mann–Whitney statistic (ties counted one half), 95% CI from the "
                "DeLong variance (Sun & Xu midrank algorithm), clipped to [0, 1]. Youden-optimal threshold: "
                "the observed score maximising sensitivity + specificity − 1, compared exactly in integers, "
                "ties to the largest threshold; predict LNM when the score is at least the threshold. "
                "Brier score: mean squared difference of score and outcome. Proportions with Wilson 95% intervals." }
            p { "Pooling: the pooled AUC, ROC curve, calibration groups and decision curve of a pool come from the "
                "secure sum of its sites' class-conditional score histograms on a grid of 10,000 bins (a site's "
                "histogram is never seen alone); the random-effects summary of sites uses each site's own AUC and "
                "DeLong variance: logit scale, delta method, REML τ² (DerSimonian–Laird beside it), Knapp–Hartung "
                "CI, prediction interval with t(k − 2), Cochran's Q and I² = max(0, (Q − (k − 1))/Q)." }
            p { "Calibration: intercept and slope of the logistic recalibration of logit(score); plot by deciles "
                "of predicted risk. Clinical utility: net benefit on thresholds 0.01 to 0.99 (Vickers & Elkin 2006)." }
            p { "Stage agreement: Cohen's κ with quadratic weights on the declared AJCC 8th scales; predicted "
                "overall stage derived from the predicted T and N categories and age by the AJCC rule." }
            p { "Odds ratios: maximum-likelihood logistic regression by Newton–Raphson (tolerance 1e-12), Wald "
                "95% CIs and two-sided normal p-values, computed federatedly from per-site sums (the DataSHIELD "
                "scheme, with every step's sums added over the sites by secure aggregation in 64-bit fixed point "
                "at scales that keep the sum exact to f64 precision); separation is reported as such, never as "
                "finite odds ratios." }
            p { "Every definition follows the project's statistics specification and is checked against "
                "scikit-learn, statsmodels and R's metafor in the project's tests." }
        },
    )
}

/// The checklist: TRIPOD+AI (2024) and TRIPOD-Cluster (2023) results items and where each is.
const CHECKLIST: [(&str, &str, &str); 11] = [
    (
        "TRIPOD+AI 12e",
        "Performance measures and plots used, with their definitions",
        "methods",
    ),
    (
        "TRIPOD+AI 20a; TRIPOD-Cluster 10a",
        "Flow of participants per site: rows read, excluded by reason, included",
        "participants",
    ),
    (
        "TRIPOD+AI 20b; TRIPOD-Cluster 10b",
        "Characteristics of the participants per site and overall",
        "participants",
    ),
    (
        "TRIPOD+AI 21",
        "Number of participants and outcome events in each analysis",
        "participants",
    ),
    (
        "TRIPOD+AI 23a; TRIPOD-Cluster 13a",
        "Discrimination with confidence intervals per site and pooled",
        "discrimination",
    ),
    ("TRIPOD+AI 23a", "ROC curves", "roc"),
    (
        "TRIPOD+AI 23a",
        "Calibration (intercept, slope, plot)",
        "calibration",
    ),
    ("TRIPOD+AI 23a", "Clinical utility (decision curves)", "decision"),
    (
        "TRIPOD+AI 23b; TRIPOD-Cluster 13b",
        "Heterogeneity of performance across sites (forest plot, summary, prediction interval, I²)",
        "heterogeneity",
    ),
    (
        "registered outcome",
        "Adjusted odds ratios of clinical factors",
        "odds-ratios",
    ),
    (
        "registered outcome",
        "Weighted κ of predicted vs pathological stage",
        "stage",
    ),
];

fn checklist() -> Markup {
    section(
        "checklist",
        "",
        html! {
            table class="checklist" {
                thead { tr { th { "item" } th { "what" } th { "section" } } }
                tbody {
                    @for (item, what, anchor) in CHECKLIST {
                        tr { td { (item) } td { (what) }
                            td { a href={ "#" (anchor) } {
                                (SECTIONS.iter().find(|(a, _)| *a == anchor).map_or(anchor, |(_, n)| n)) } } }
                    }
                }
            }
        },
    )
}
