//! A site's own report (`fedlnm-node site-report`): the study report's sections on this site's
//! patients alone, from the node's own validation records (its metrics, score histogram, stage
//! confusion matrices and cohort of every round), plus Grad-CAM overlays of chosen patients. It is
//! for the hospital only: the node writes it into its own folder and nothing of it is sent.

use crate::figures::{self, PoolFigures};
use crate::participants::flow_table;
use crate::sections::{confusion_table, discrimination_rows, kappa_with_ci};
use crate::svg::{LineChart, Series, ticks};
use crate::{STYLE, section_titled};
use base64::Engine as _;
use fedlnm_shared::federation::{STAGE_SCALES, SiteValidation};
use maud::{DOCTYPE, PreEscaped, html};

/// One Grad-CAM overlay: the patient's pseudonymous id and the PNG.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlay {
    pub patient_id: String,
    pub png: Vec<u8>,
}

/// The inputs of a site's page.
pub struct SitePage<'a> {
    pub site: &'a str,
    pub study: &'a str,
    /// The node's own records, `(round, record)` in round order; the last is the report's.
    pub rounds: &'a [(u64, SiteValidation)],
    pub overlays: &'a [Overlay],
    /// When the page was made (RFC 3339).
    pub generated_at: &'a str,
}

/// The page as HTML; a site without a record gets a page that says so.
#[must_use]
pub fn site_page(page: &SitePage<'_>) -> String {
    let title = format!("fedlnm site report: {} (study {})", page.site, page.study);
    let Some((round, last)) = page.rounds.last() else {
        return html! {
            (DOCTYPE) html lang="en" { head { meta charset="utf-8"; title { (title) } style { (PreEscaped(STYLE)) } }
                body { h1 { (title) } p { "This node has not validated a global model yet." } } }
        }
        .into_string();
    };
    let own = PoolFigures::of_site(page.site, last);
    let metrics = &last.metrics;
    let sites = std::slice::from_ref(metrics);
    html! {
        (DOCTYPE)
        html lang="en" {
            head { meta charset="utf-8"; title { (title) } style { (PreEscaped(STYLE)) } }
            body {
                header {
                    h1 { (title) }
                    p class="meta" { "Validation of round " (round) "'s global model on this site's patients · page made "
                        (page.generated_at) }
                    p class="meta" { strong { "For this hospital only." } " This page is made by the site's node from its own "
                        "records and is never sent: the aggregator receives only the aggregate metrics of the "
                        "study report and, inside a secure sum with other sites, the score histogram and stage "
                        "confusion matrices." }
                }
                (section_titled("participants", "Patients of this site", html! { (flow_table(sites)) }))
                (section_titled("discrimination", "Discrimination, calibration and stage agreement", html! {
                    table class="discrimination" {
                        thead { tr { th { "site" } th { "role" } th { "n" } th { "AUC (95% CI)" } th { "threshold" }
                            th { "sensitivity" } th { "specificity" } th { "Brier" } } }
                        tbody { (discrimination_rows(sites, &[])) }
                    }
                    p class="note" { (crate::format::normalisation_statement(*round, sites)) }
                    table class="kappa" {
                        thead { tr { th { "calibration intercept" } th { "calibration slope" } th { "κ T (95% CI)" }
                            th { "κ N (95% CI)" } th { "κ stage (95% CI)" } } }
                        tbody { tr {
                            td { (crate::format::fixed(metrics.calibration_intercept)) }
                            td { (crate::format::fixed(metrics.calibration_slope)) }
                            td { (kappa_with_ci(metrics.kappa_t, metrics.kappa_t_se)) }
                            td { (kappa_with_ci(metrics.kappa_n, metrics.kappa_n_se)) }
                            td { (kappa_with_ci(metrics.kappa_stage, metrics.kappa_stage_se)) } } }
                    }
                    h3 { "Confusion matrices (this site)" }
                    div class="confusions" {
                        @for (index, (scale, labels)) in STAGE_SCALES.iter().enumerate() {
                            (confusion_table(scale, labels, &last.stage_confusion.rows(index)))
                        }
                    }
                }))
                (section_titled("roc", "ROC curve, calibration and decision curve", html! {
                    (figures::roc_chart(std::slice::from_ref(&own)))
                    (figures::calibration_chart(std::slice::from_ref(&own)))
                    (figures::decision_chart(std::slice::from_ref(&own)))
                }))
                (section_titled("rounds", "AUC of each round's model on this site", html! {
                    (auc_by_round(page.rounds))
                }))
                (section_titled("explanations", "Grad-CAM: where the image branch looked", html! {
                    @if page.overlays.is_empty() {
                        p { "No patient was chosen (site-report --explain PATIENT_ID ...)." }
                    }
                    div class="overlays" {
                        @for overlay in page.overlays {
                            figure class="overlay" {
                                img alt={ "Grad-CAM overlay of patient " (overlay.patient_id) }
                                    src={ "data:image/png;base64," (base64::engine::general_purpose::STANDARD.encode(&overlay.png)) };
                                figcaption { (overlay.patient_id) }
                            }
                        }
                    }
                }))
            }
        }
    }
    .into_string()
}

fn auc_by_round(rounds: &[(u64, SiteValidation)]) -> maud::Markup {
    #[allow(clippy::cast_precision_loss)] // Round numbers are small.
    let points: Vec<(f64, f64)> = rounds
        .iter()
        .filter_map(|(round, record)| Some((*round as f64, record.metrics.auc?)))
        .collect();
    #[allow(clippy::cast_precision_loss)] // Round numbers are small.
    let last = rounds.last().map_or(1.0, |(round, _)| *round as f64).max(1.0);
    LineChart {
        id: "auc-by-round",
        title: "AUC by round on this site",
        x_label: "round",
        y_label: "AUC",
        x: (-0.3, last + 0.3),
        y: (0.0, 1.0),
        x_ticks: ticks(0.0, last, (last / 10.0).ceil().max(1.0)),
        y_ticks: ticks(0.0, 1.0, 0.2),
        x_decimals: 0,
        y_decimals: 1,
        reference: Some([(-0.3, 0.5), (last + 0.3, 0.5)]),
        series: vec![Series {
            label: "AUC of the round's global model".to_owned(),
            colour: figures::site_colour(0),
            dashed: false,
            markers: true,
            runs: vec![points],
        }],
        marked: Vec::new(),
    }
    .render()
}
