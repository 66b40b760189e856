//! `fedlnm-report`: the study's HTML pages, rendered from records into strings. No I/O (the callers
//! read the records and write the pages), no network, no drawing library: maud templates that escape
//! every value, with inline CSS and SVG figures, no script, nothing fetched.
//!
//! - [`render`]: `report.html`, the study report a clinical reader opens (the aggregator's
//!   `fedlnm-aggregator report` and `fedlnm-sim`), organised by the results items of TRIPOD+AI (2024)
//!   and TRIPOD-Cluster (2023) with a checklist mapping each item to its section; with a
//!   [`LiveStatus`], the aggregator's live status page (`/status`).
//! - [`design_page`]: the page of a validation design made of several studies (leave-one-site-out,
//!   k-fold).
//! - [`site::site_page`]: a site's own report (`fedlnm-node site-report`), for the hospital only.
//!
//! Every number of the study pages comes from the committed rounds and the stored analyses: per-site
//! aggregate metrics, the pools' secure sums of score histograms and stage confusion matrices, the
//! random-effects meta-analysis of the sites' AUCs (`stats::meta`), the federated odds ratios. No
//! patient-level value is an input, so none can be an output. A site's page reads the site's own
//! records only.

mod design;
mod figures;
pub mod format;
mod methods;
mod participants;
pub mod pools;
mod sections;
pub mod site;
mod svg;
mod utility;

use fedlnm_shared::analysis::AnalysisResult;
use fedlnm_shared::config::SiteRole;
use fedlnm_shared::federation::RoundRecord;
use maud::{DOCTYPE, Markup, PreEscaped, html};

pub use design::{
    Comparison, ComparisonRow, DesignRow, DesignSummary, comparison_page, design_page, mean_and_sd,
    random_effects,
};
pub use methods::{MethodRow, Versus, methods_markdown, methods_page};

/// The row and pool name of the training sites' pool (the tables' `site` column), and of the
/// validate-only sites' pool.
pub const POOLED_TRAIN: &str = "pooled-train";
pub const POOLED_VALIDATION: &str = "pooled-validation";

/// What the live status page adds to the report: where the study is now.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveStatus {
    /// The round in progress and its phase, in words (`round 3: training`).
    pub progress: String,
    /// Every site of the study, its role, and how long ago (seconds) it last made an authorized
    /// request (`None`: not since the aggregator started).
    pub sites: Vec<(String, SiteRole, Option<f64>)>,
    /// The page reloads itself after this many seconds.
    pub refresh_seconds: u32,
}

/// The inputs of the page.
pub struct Page<'a> {
    /// Every committed round in order; the last one is the report's.
    pub records: &'a [&'a RoundRecord],
    pub analyses: &'a [AnalysisResult],
    /// Present on the live status page.
    pub live: Option<&'a LiveStatus>,
    /// When the page was made (RFC 3339).
    pub generated_at: &'a str,
}

/// The report's sections: anchor and title, in page order (the table of contents and the checklist
/// link to these anchors).
pub const SECTIONS: [(&str, &str); 12] = [
    ("participants", "Participants and outcome events"),
    ("discrimination", "Discrimination per site and pooled"),
    ("heterogeneity", "Heterogeneity across sites"),
    ("roc", "ROC curves"),
    ("calibration", "Calibration"),
    ("decision", "Clinical utility: decision curves"),
    ("stage", "Agreement of predicted and pathological stage"),
    ("odds-ratios", "Clinical factors: federated odds ratios"),
    ("rounds", "Training: AUC by round"),
    ("privacy", "Privacy"),
    ("methods", "Methods and definitions"),
    ("checklist", "TRIPOD+AI and TRIPOD-Cluster checklist"),
];

/// The page as HTML. An empty `records` cannot happen for a report (a study has round 0); the
/// status page shows "no committed round yet" instead.
#[must_use]
pub fn render(page: &Page<'_>) -> String {
    let last = page.records.last().copied();
    let title = last.map_or_else(
        || "fedlnm study (no committed round yet)".to_owned(),
        |record| {
            format!(
                "fedlnm study {}: report after round {}",
                record.study, record.round
            )
        },
    );
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if let Some(live) = page.live {
                    meta http-equiv="refresh" content=(live.refresh_seconds);
                }
                title { (title) }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header {
                    h1 { (title) }
                    @if let Some(record) = last {
                        p class="meta" {
                            "Model " code { (format::short_digest(&record.model_digest)) } " · "
                            (format::aggregation_name(record)) " aggregation · "
                            (record.contributors.len()) " training sites in the last round · committed "
                            (record.committed_at) " · page made " (page.generated_at)
                        }
                    }
                    p class="meta" {
                        "Aggregate numbers only: every figure comes from the sites' validation reports, "
                        "the secure sums of their score histograms and the federated analyses; no "
                        "patient-level value reached the aggregator."
                    }
                }
                @if let Some(live) = page.live {
                    (sections::live(live))
                }
                nav {
                    h2 { "Contents" }
                    ol { @for (anchor, name) in SECTIONS { li { a href={ "#" (anchor) } { (name) } } } }
                }
                @match last {
                    Some(record) => (sections::all(page.records, record, page.analyses)),
                    None => p { "No round has been committed yet." },
                }
            }
        }
    };
    markup.into_string()
}

/// A section of the study report with its anchor, its title from [`SECTIONS`] and the checklist
/// items it answers.
pub(crate) fn section(anchor: &str, items: &str, body: Markup) -> Markup {
    let name = SECTIONS
        .iter()
        .find(|(a, _)| *a == anchor)
        .map_or(anchor, |(_, name)| name);
    section_with(anchor, name, items, body)
}

/// A section with its own title (a site's page).
pub(crate) fn section_titled(anchor: &str, title: &str, body: Markup) -> Markup {
    section_with(anchor, title, "", body)
}

fn section_with(anchor: &str, name: &str, items: &str, body: Markup) -> Markup {
    html! {
        section id=(anchor) {
            h2 { (name) @if !items.is_empty() { " " span class="items" { "(" (items) ")" } } }
            (body)
        }
    }
}

/// The page's style sheet, inline (no file or network access).
pub(crate) const STYLE: &str = "
body { font-family: 'DejaVu Sans', 'Helvetica Neue', Arial, sans-serif; margin: 0 auto; max-width: 1100px;
  padding: 1.5rem; color: #1a1a1a; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: .3rem; } h2 { border-bottom: 2px solid #ddd; padding-bottom: .2rem; margin-top: 2.2rem; }
h3 { margin-top: 1.4rem; } .meta { color: #555; font-size: .9rem; margin: .2rem 0; } .items { color: #777; font-size: .85rem; font-weight: normal; }
table { border-collapse: collapse; margin: .6rem 0 1rem; font-size: .88rem; }
th, td { border-bottom: 1px solid #e3e3e3; padding: .28rem .6rem; text-align: right; vertical-align: top; }
th:first-child, td:first-child { text-align: left; }
table.participants td:nth-child(2), table.discrimination td:nth-child(2), table.calibration td:nth-child(2),
table.kappa td:nth-child(2), table.participants th:nth-child(2), table.discrimination th:nth-child(2),
table.calibration th:nth-child(2), table.kappa th:nth-child(2), table.checklist td, table.checklist th,
table.rounds td:nth-child(2), table.rounds th:nth-child(2),
table.sites-seen td, table.sites-seen th, td.reasons { text-align: left; } thead th { border-bottom: 2px solid #bbb; background: #fafafa; }
tr.pooled td { font-weight: bold; background: #f6f8fb; } td.undefined { color: #999; }
figure { margin: .8rem 0 1.4rem; } figure svg { width: 100%; max-width: 760px; height: auto; display: block; }
figure.forest svg { max-width: 980px; }
svg text { font-size: 13px; fill: #222; } svg .label { font-size: 14px; } svg .heading { font-weight: bold; }
svg .summary-label { font-weight: bold; }
svg .grid line { stroke: #eee; } svg .axis line, svg .axis .frame { stroke: #777; fill: none; }
svg .reference { stroke: #999; stroke-dasharray: 6 4; } svg .ci { stroke: #333; stroke-width: 1.6; }
svg .estimate { fill: #1f4e79; } svg .summary polygon { fill: #c0392b; } svg .prediction { stroke: #c0392b; stroke-width: 1.4; stroke-dasharray: 3 2; }
ul.legend { list-style: none; padding: 0; margin: .3rem 0 0; font-size: .85rem; display: flex; flex-wrap: wrap; gap: .3rem 1.2rem; }
.swatch { display: inline-block; width: 26px; border-top: 3px solid; vertical-align: middle; margin-right: .4rem; }
.swatch.dashed { border-top-style: dashed; }
table.confusion td, table.confusion th { text-align: center; min-width: 2.2rem; }
table.confusion td.diagonal { background: #e8f1e4; font-weight: bold; }
div.confusions { display: flex; flex-wrap: wrap; gap: 0 1.6rem; align-items: flex-start; } .live { background: #f3f8f1; border: 1px solid #cfe3c8; padding: .4rem 1rem; }
.note { color: #555; font-size: .88rem; }
";
