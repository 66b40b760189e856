//! The page of the federated-quality comparison: one row per training method (centralised on the
//! pooled training sites, each site alone, FedAvg secure and plain, FedProx, FedBN) with its external
//! AUC and CI, its gap to the generator's oracle and to the centralised model (the paired DeLong test
//! on the external patients), its internal AUC, the κ of T, N and stage, and its wall time; and the
//! external AUC by round of each federated method, the single-shot baselines as flat lines.

use super::STYLE;
use super::figures::site_colour;
use super::svg::{LineChart, Series, ticks};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use serde::{Deserialize, Serialize};

/// A paired DeLong test against the centralised model: ΔAUC, its 95% CI and the two-sided p.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Versus {
    pub delta: f64,
    pub ci_lower: Option<f64>,
    pub ci_upper: Option<f64>,
    pub p: Option<f64>,
}

/// One training method's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodRow {
    pub method: String,
    /// Whether it is a federated study (else trained once on pooled or single-site patients).
    pub federated: bool,
    /// On the external (validate-only) site.
    pub n: u64,
    pub n_positive: u64,
    pub auc: Option<f64>,
    pub ci_lower: Option<f64>,
    pub ci_upper: Option<f64>,
    /// AUC − the generator's oracle AUC on the same patients.
    pub gap_to_oracle: Option<f64>,
    /// Paired DeLong against the centralised model on the external patients: ΔAUC = this −
    /// centralised, its 95% CI and p; `None` for the centralised row itself.
    pub vs_centralised: Option<Versus>,
    /// AUC on the training sites' held-out patients (pooled).
    pub internal_auc: Option<f64>,
    pub kappa_t: Option<f64>,
    pub kappa_n: Option<f64>,
    pub kappa_stage: Option<f64>,
    pub seconds: f64,
    /// External AUC after each round (federated methods).
    pub auc_by_round: Vec<(u64, f64)>,
    /// The final model's SHA-256 (federated methods).
    pub model_digest: Option<String>,
}

fn three(value: Option<f64>) -> String {
    value.map_or_else(|| "—".to_owned(), |v| format!("{:.3}", v + 0.0))
}

/// A difference with its sign, a value that rounds to zero written +0.000 (never −0.000).
fn signed(value: f64) -> String {
    let rounded = (value * 1000.0).round() / 1000.0 + 0.0;
    format!("{rounded:+.3}")
}

/// The comparison's rows as a markdown table.
#[must_use]
pub fn methods_markdown(rows: &[MethodRow]) -> String {
    let mut text = String::from(
        "| method | external AUC (95% CI) | gap to oracle | Δ vs centralised (95% CI), p | internal AUC | κ T | κ N | κ stage | wall time (s) |\n\
         |---|---|---:|---|---:|---:|---:|---:|---:|\n",
    );
    for row in rows {
        text.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.0} |\n",
            row.method,
            auc_with_ci(row),
            row.gap_to_oracle.map_or_else(|| "—".to_owned(), signed),
            versus(row),
            three(row.internal_auc),
            three(row.kappa_t),
            three(row.kappa_n),
            three(row.kappa_stage),
            row.seconds
        ));
    }
    text
}

fn auc_with_ci(row: &MethodRow) -> String {
    match (row.auc, row.ci_lower, row.ci_upper) {
        (Some(auc), Some(l), Some(u)) => format!("{auc:.3} ({l:.3}–{u:.3})"),
        (auc, _, _) => three(auc),
    }
}

fn versus(row: &MethodRow) -> String {
    match row.vs_centralised {
        None => "reference".to_owned(),
        Some(Versus {
            delta,
            ci_lower: Some(l),
            ci_upper: Some(u),
            p,
        }) => format!(
            "{} ({} to {}), {}",
            signed(delta),
            signed(l),
            signed(u),
            match p {
                None => "p undefined".to_owned(),
                Some(p) if p < 0.001 => "p < 0.001".to_owned(),
                Some(p) => format!("p = {p:.3}"),
            }
        ),
        Some(Versus { delta, .. }) => signed(delta),
    }
}

/// The comparison's page: `title`, a paragraph saying what was done, the table and the figure.
#[must_use]
pub fn methods_page(title: &str, note: &str, rows: &[MethodRow], oracle: Option<f64>) -> String {
    let markup: Markup = html! {
        (DOCTYPE)
        html lang="en" {
            head { meta charset="utf-8"; title { (title) } style { (PreEscaped(STYLE)) } }
            body {
                h1 { (title) }
                p class="note" { (note) }
                @if let Some(oracle) = oracle {
                    p { "The generator's oracle AUC on the external patients (the true LNM probability): "
                        strong { (format!("{oracle:.3}")) } }
                }
                table class="methods" {
                    thead { tr { th { "method" } th { "external AUC (95% CI)" } th { "gap to oracle" }
                        th { "Δ vs centralised (95% CI), p" } th { "internal AUC" } th { "κ T" } th { "κ N" }
                        th { "κ stage" } th { "wall time (s)" } } }
                    tbody {
                        @for row in rows {
                            tr data-method=(row.method) { td { (row.method) } td { (auc_with_ci(row)) }
                                td { (row.gap_to_oracle.map_or_else(|| "—".to_owned(), signed)) }
                                td { (versus(row)) } td { (three(row.internal_auc)) } td { (three(row.kappa_t)) }
                                td { (three(row.kappa_n)) } td { (three(row.kappa_stage)) }
                                td { (format!("{:.0}", row.seconds)) } }
                        }
                    }
                }
                (by_round(rows, oracle))
            }
        }
    };
    markup.into_string()
}

/// External AUC by round: each federated method's curve; the baselines and the oracle as flat lines.
fn by_round(rows: &[MethodRow], oracle: Option<f64>) -> Markup {
    let last = rows
        .iter()
        .flat_map(|row| row.auc_by_round.iter().map(|(round, _)| *round))
        .max()
        .unwrap_or(1)
        .max(1);
    #[allow(clippy::cast_precision_loss)] // Round numbers are small.
    let span = (0.0, last as f64);
    let mut series: Vec<Series> = rows
        .iter()
        .enumerate()
        .filter_map(|(index, row)| {
            let run = if row.federated {
                row.auc_by_round
                    .iter()
                    .map(|&(round, auc)| (round as f64, auc))
                    .collect()
            } else {
                let auc = row.auc?;
                vec![(span.0, auc), (span.1, auc)]
            };
            Some(Series {
                label: row.method.clone(),
                colour: site_colour(index),
                dashed: !row.federated,
                markers: row.federated,
                runs: vec![run],
            })
        })
        .collect();
    if let Some(oracle) = oracle {
        series.push(Series {
            label: "oracle (true LNM probability)".to_owned(),
            colour: "#111111".to_owned(),
            dashed: true,
            markers: false,
            runs: vec![vec![(span.0, oracle), (span.1, oracle)]],
        });
    }
    let lowest = rows
        .iter()
        .flat_map(|row| row.auc_by_round.iter().map(|(_, auc)| *auc).chain(row.auc))
        .fold(0.9_f64, f64::min);
    let bottom = ((lowest - 0.05) * 10.0).floor() / 10.0;
    LineChart {
        id: "methods-by-round",
        title: "External AUC by round",
        x_label: "round",
        y_label: "external AUC",
        x: span,
        y: (bottom.clamp(0.0, 0.9), 1.0),
        x_ticks: ticks(0.0, span.1, (span.1 / 8.0).ceil().max(1.0)),
        y_ticks: ticks(bottom.clamp(0.0, 0.9), 1.0, 0.05),
        x_decimals: 0,
        y_decimals: 2,
        reference: None,
        series,
        marked: Vec::new(),
    }
    .render()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn row(method: &str, federated: bool, auc: f64) -> MethodRow {
        MethodRow {
            method: method.to_owned(),
            federated,
            n: 500,
            n_positive: 180,
            auc: Some(auc),
            ci_lower: Some(auc - 0.04),
            ci_upper: Some(auc + 0.04),
            gap_to_oracle: Some(auc - 0.85),
            vs_centralised: (method != "centralised").then_some(Versus {
                delta: auc - 0.8,
                ci_lower: Some(-0.05),
                ci_upper: Some(0.02),
                p: Some(0.4),
            }),
            internal_auc: Some(0.83),
            kappa_t: Some(0.3),
            kappa_n: Some(0.4),
            kappa_stage: Some(0.35),
            seconds: 61.0,
            auc_by_round: if federated {
                vec![(1, 0.7), (2, 0.75), (3, 0.78)]
            } else {
                Vec::new()
            },
            model_digest: None,
        }
    }

    #[test]
    fn the_page_has_a_row_and_a_curve_per_method() {
        let rows = [row("centralised", false, 0.8), row("FedAvg <secure>", true, 0.78)];
        let page = methods_page("Methods", "note", &rows, Some(0.85));
        assert!(
            page.contains("<tr data-method=\"FedAvg &lt;secure&gt;\">"),
            "escaped"
        );
        assert!(page.contains("0.780 (0.740–0.820)"));
        assert!(page.contains("-0.020 (-0.050 to +0.020), p = 0.400"));
        assert!(page.contains("reference"));
        assert_eq!(page.matches("<polyline").count(), 3, "two methods and the oracle");
        let markdown = methods_markdown(&rows);
        assert_eq!(markdown.lines().count(), 4);
        assert_eq!(signed(-0.0002), "+0.000");
        assert_eq!(signed(-0.0302), "-0.030");
    }
}
