//! `rounds.csv` and `final_sites.csv`: one row per round and site, then one per pool.

use super::ReportError;
use fedlnm_report::format::{aggregation_name, number};
use fedlnm_report::pools::{pooled_lnm_rate, pools};
use fedlnm_shared::federation::RoundRecord;

/// The columns of `rounds.csv` and `final_sites.csv`, in order.
pub const CSV_COLUMNS: [&str; 21] = [
    "round",
    "site",
    "role",
    "n_patients",
    "n_positive",
    "lnm_rate",
    "auc",
    "auc_ci_lower",
    "auc_ci_upper",
    "youden_threshold",
    "sensitivity",
    "specificity",
    "brier",
    "kappa_t",
    "kappa_n",
    "kappa_stage",
    "normalisation",
    "contributors",
    "total_samples",
    "aggregation",
    "model_digest",
];

/// The CSV rows of some rounds: each site, then the training pool, then the validation pool.
pub(super) fn rows_csv(file: &'static str, records: &[&RoundRecord]) -> Result<Vec<u8>, ReportError> {
    let table_error = |error: csv::Error| ReportError::Table {
        file,
        message: error.to_string(),
    };
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer.write_record(CSV_COLUMNS).map_err(table_error)?;
    for record in records {
        let round_cells = [
            record.contributors.join(";"),
            record.total_samples.to_string(),
            aggregation_name(record),
            record.model_digest.clone(),
        ];
        for site in &record.sites {
            let mut row = vec![
                record.round.to_string(),
                site.site.clone(),
                site.role.to_string(),
                site.n_patients.to_string(),
                site.n_positive.to_string(),
                number(Some(site.lnm_rate)),
                number(site.auc),
                number(site.auc_ci_lower),
                number(site.auc_ci_upper),
                number(site.youden_threshold),
                number(site.sensitivity),
                number(site.specificity),
                number(Some(site.brier)),
                number(site.kappa_t),
                number(site.kappa_n),
                number(site.kappa_stage),
                site.normalisation.map(|s| s.to_string()).unwrap_or_default(),
            ];
            row.extend(round_cells.iter().cloned());
            writer.write_record(&row).map_err(table_error)?;
        }
        for (name, role, pool) in pools(record) {
            // A pool has only counts and the AUC: the threshold, Brier score, kappas and normalisation
            // statistics are per site.
            let mut row = vec![
                record.round.to_string(),
                name.to_owned(),
                role.to_string(),
                pool.n_patients.to_string(),
                pool.n_positive.to_string(),
                number(pooled_lnm_rate(pool)),
                number(pool.auc),
                number(pool.auc_ci_lower),
                number(pool.auc_ci_upper),
            ];
            row.extend(std::iter::repeat_n(String::new(), 8));
            row.extend(round_cells.iter().cloned());
            writer.write_record(&row).map_err(table_error)?;
        }
    }
    writer.into_inner().map_err(|error| ReportError::Table {
        file,
        message: error.error().to_string(),
    })
}
