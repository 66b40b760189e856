//! `roc_final.png` and `auc_by_round.png`: which curves each figure shows, drawn by [`super::chart`].

use super::chart::{Curve, Figure, POOLED_TRAIN_COLOUR, POOLED_VALIDATION_COLOUR, draw_figure, site_colour};
use super::{
    AUC_FIGURE, AUC_FIGURE_SIZE, POOLED_TRAIN, POOLED_VALIDATION, ROC_FIGURE, ROC_FIGURE_SIZE, ReportError,
};
use fedlnm_report::format::auc_with_ci;
use fedlnm_report::pools::pools;
use fedlnm_shared::config::SiteRole;
use fedlnm_shared::federation::{RoundRecord, ScoreHistogram};
use std::path::Path;

/// `roc_final.png`: the last round's pooled ROC curves, from the secure sums of the pools' score
/// histograms (a site's own curve never leaves it: its AUC is in the tables).
pub(super) fn roc_figure(path: &Path, record: &RoundRecord) -> Result<Vec<u8>, ReportError> {
    let mut curves = Vec::new();
    for (index, (name, _, pool)) in pools(record).enumerate() {
        if let Some(site_name) = pool
            .sites
            .iter()
            .find(|site| !record.sites.iter().any(|s| &&s.site == site))
        {
            return Err(ReportError::UnknownPooledSite {
                path: path.to_path_buf(),
                pool: name,
                site: site_name.clone(),
            });
        }
        pool.histogram.check().map_err(|source| ReportError::Histogram {
            path: path.to_path_buf(),
            site: name.to_owned(),
            source,
        })?;
        let train = name == POOLED_TRAIN;
        curves.push(Curve {
            label: format!(
                "{name} ({} sites, n = {}): AUC {}",
                pool.sites.len(),
                pool.n_patients,
                auc_with_ci(pool.auc, pool.auc_ci_lower, pool.auc_ci_upper)
            ),
            colour: site_colour(index),
            width: 3,
            dashed: !train,
            runs: roc_runs(path, name, &pool.histogram)?,
        });
    }
    let caption = format!(
        "Pooled ROC curves, round {} (study {}; secure sums of the sites' score histograms)",
        record.round, record.study
    );
    let figure = Figure {
        file: ROC_FIGURE,
        size: ROC_FIGURE_SIZE,
        caption: &caption,
        x_label: "1 − specificity",
        y_label: "sensitivity",
        x_range: 0.0..1.0,
        y_range: 0.0..1.0,
        reference: [(0.0, 0.0), (1.0, 1.0)],
        integer_x: false,
    };
    draw_figure(figure, &curves)
}

/// The ROC curve as one run; none without both classes (the legend says the AUC is undefined).
pub(super) fn roc_runs(
    path: &Path,
    site: &str,
    histogram: &ScoreHistogram,
) -> Result<Vec<Vec<(f64, f64)>>, ReportError> {
    if histogram.n_positive() == 0 || histogram.n_negative() == 0 {
        return Ok(Vec::new());
    }
    let points = histogram.roc().map_err(|source| ReportError::Roc {
        path: path.to_path_buf(),
        site: site.to_owned(),
        source,
    })?;
    Ok(vec![points.iter().map(|point| (point.fpr, point.tpr)).collect()])
}

/// `auc_by_round.png`: AUC per round of each site (in order of first appearance) and both pools.
pub(super) fn auc_figure(records: &[&RoundRecord]) -> Result<Vec<u8>, ReportError> {
    let mut site_names: Vec<(&str, SiteRole)> = Vec::new();
    for site in records.iter().flat_map(|record| &record.sites) {
        if !site_names.iter().any(|(name, _)| *name == site.site) {
            site_names.push((&site.site, site.role));
        }
    }
    let series = |value_of: &dyn Fn(&RoundRecord) -> Option<f64>| -> Vec<Vec<(f64, f64)>> {
        let mut runs: Vec<Vec<(f64, f64)>> = Vec::new();
        let mut previous_defined = false;
        for record in records {
            match value_of(record) {
                Some(auc) if auc.is_finite() => {
                    let point = (record.round as f64, auc);
                    match runs.last_mut() {
                        Some(run) if previous_defined => run.push(point),
                        _ => runs.push(vec![point]),
                    }
                    previous_defined = true;
                }
                _ => previous_defined = false,
            }
        }
        runs
    };
    let mut curves = Vec::new();
    for (index, (name, role)) in site_names.iter().enumerate() {
        curves.push(Curve {
            label: format!("{name} ({role})"),
            colour: site_colour(index),
            width: 2,
            dashed: false,
            runs: series(&|record| {
                record
                    .sites
                    .iter()
                    .find(|site| site.site == *name)
                    .and_then(|site| site.auc)
            }),
        });
    }
    curves.push(Curve {
        label: POOLED_TRAIN.to_owned(),
        colour: POOLED_TRAIN_COLOUR,
        width: 3,
        dashed: false,
        runs: series(&|record| record.pooled_train_sites.as_ref().and_then(|pool| pool.auc)),
    });
    curves.push(Curve {
        label: POOLED_VALIDATION.to_owned(),
        colour: POOLED_VALIDATION_COLOUR,
        width: 3,
        dashed: true,
        runs: series(&|record| record.pooled_validation_sites.as_ref().and_then(|pool| pool.auc)),
    });

    let lowest = curves
        .iter()
        .flat_map(|curve| curve.runs.iter().flatten())
        .map(|point| point.1)
        .fold(0.5_f64, f64::min);
    let y_low = ((lowest - 0.05) * 10.0).floor().max(0.0) / 10.0;
    let last_round = records.last().map_or(0.0, |record| record.round as f64);
    let caption = match records.last() {
        Some(record) => format!("AUC by round (study {})", record.study),
        None => "AUC by round".to_owned(),
    };
    let figure = Figure {
        file: AUC_FIGURE,
        size: AUC_FIGURE_SIZE,
        caption: &caption,
        x_label: "round",
        y_label: "AUC",
        x_range: -0.25..last_round + 0.25,
        y_range: y_low..1.0,
        reference: [(-0.25, 0.5), (last_round + 0.25, 0.5)],
        integer_x: true,
    };
    draw_figure(figure, &curves)
}
