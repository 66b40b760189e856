//! `fedlnm-node stats`: the statistics engine over CSV files, one JSON object on standard output.
//!
//! The output keys are a stable contract (README, "stats"); undefined values are JSON `null`.

use anyhow::Context as _;
use clap::{Args, Subcommand};
use fedlnm_shared::stats::kappa;
use fedlnm_shared::stats::{binary, calibration, privacy};
use fedlnm_shared::table::Table;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The statistics subcommands.
#[derive(Debug, Subcommand)]
pub enum StatsCommand {
    /// Discrimination of a score for a 0/1 outcome: AUC with DeLong 95% CI, the Youden-optimal
    /// threshold with its sensitivity and specificity, average precision, Brier score, 2×2 tables.
    Binary(BinaryArgs),
    /// Agreement of predicted and true stage codes: Cohen's kappa (unweighted, linear, quadratic)
    /// with standard errors and 95% CIs, and the confusion matrix.
    Kappa(KappaArgs),
    /// Adjusted odds ratios: logistic regression of a 0/1 outcome (LNM) on covariates, optionally
    /// pooled across hospitals the federated way.
    Logistic(super::stats_logistic::LogisticArgs),
    /// The privacy a differentially private analysis spends: ε at δ of the Gaussian mechanism with
    /// noise multiplier σ on a Poisson sample at rate q, composed over N steps (Rényi-DP accountant,
    /// as Google's dp-accounting computes it). A federated round in which every site takes part is
    /// one step at rate 1.
    Privacy(PrivacyArgs),
}

/// Arguments of `stats privacy`.
#[derive(Debug, Args)]
pub struct PrivacyArgs {
    /// Noise standard deviation over the L2 sensitivity (the clipping norm).
    #[arg(long)]
    pub noise_multiplier: f64,
    /// Probability that each record (or site) takes part in a step (1: all of them).
    #[arg(long, default_value_t = 1.0)]
    pub sampling_rate: f64,
    /// Number of steps (rounds) composed.
    #[arg(long)]
    pub steps: u64,
    /// The δ of the (ε, δ) guarantee (below 1 / number of records).
    #[arg(long, default_value_t = 1e-5)]
    pub delta: f64,
}

/// Arguments of `stats binary`.
#[derive(Debug, Args)]
pub struct BinaryArgs {
    /// CSV file with a header row.
    #[arg(long)]
    pub input: PathBuf,
    /// Column holding the true outcome (0 or 1).
    #[arg(long, default_value = "y_true")]
    pub truth: String,
    /// Column holding the predicted probability (0 to 1; higher means more likely positive).
    #[arg(long, default_value = "y_score")]
    pub score: String,
    /// Column naming each row's site: adds per-site results under "sites".
    #[arg(long)]
    pub site: Option<String>,
    /// A second score column on the same patients: adds the paired DeLong test of the two AUCs.
    #[arg(long, value_name = "COLUMN")]
    pub compare: Option<String>,
    /// Also output the ROC curve points, the decision curve (net benefit at 1%..99%) and the
    /// calibration plot's points (10 groups of equal size by predicted risk).
    #[arg(long)]
    pub curves: bool,
}

/// Arguments of `stats kappa`.
#[derive(Debug, Args)]
pub struct KappaArgs {
    /// CSV file with a header row.
    #[arg(long)]
    pub input: PathBuf,
    /// Number of categories of the declared scale; codes run 0..K-1 (T: 7, N: 3, overall stage: 5).
    #[arg(long)]
    pub k: usize,
    /// Column holding the true (pathological) code.
    #[arg(long, default_value = "y_true")]
    pub truth: String,
    /// Column holding the predicted code.
    #[arg(long, default_value = "y_pred")]
    pub pred: String,
}

/// Runs one `stats` subcommand and prints its JSON.
pub fn run(command: StatsCommand) -> anyhow::Result<()> {
    let output = match command {
        StatsCommand::Binary(args) => binary_report(&args)?,
        StatsCommand::Kappa(args) => kappa_report(&args)?,
        StatsCommand::Logistic(args) => super::stats_logistic::report(&args)?,
        StatsCommand::Privacy(args) => privacy_report(&args)?,
    };
    println!("{}", serde_json::to_string_pretty(&output)?);
    Ok(())
}

/// The JSON of `stats privacy`.
///
/// # Errors
/// A parameter outside its range ([`privacy::PrivacyError`]).
pub fn privacy_report(args: &PrivacyArgs) -> anyhow::Result<Value> {
    let mut accountant = privacy::RdpAccountant::default();
    accountant.compose_poisson_gaussian(args.sampling_rate, args.noise_multiplier, args.steps)?;
    let (epsilon, order) = accountant.epsilon(args.delta)?;
    Ok(json!({
        "epsilon": epsilon,
        "delta": args.delta,
        "optimal_order": order,
        "noise_multiplier": args.noise_multiplier,
        "sampling_rate": args.sampling_rate,
        "steps": args.steps,
        "accountant": "Rényi DP of the Poisson-subsampled Gaussian mechanism (Mironov et al. 2019), converted with Canonne, Kamath & Steinke 2020",
    }))
}

/// The JSON of `stats binary`.
pub fn binary_report(args: &BinaryArgs) -> anyhow::Result<Value> {
    let table = Table::read(&args.input)?;
    let truth = table.binary_column(&args.truth)?;
    let score = table.probability_column(&args.score)?;
    let compare = args
        .compare
        .as_deref()
        .map(|column| table.probability_column(column))
        .transpose()?;
    let describe = |rows: &[usize]| -> anyhow::Result<Value> {
        let y: Vec<bool> = rows.iter().map(|&i| truth[i]).collect();
        let s: Vec<f64> = rows.iter().map(|&i| score[i]).collect();
        let mut object = serde_json::to_value(binary::binary_metrics(&y, &s)?)?;
        if let Some(other) = &compare {
            let b: Vec<f64> = rows.iter().map(|&i| other[i]).collect();
            object["paired_delong"] = serde_json::to_value(binary::paired_delong(&y, &s, &b)?)?;
        }
        if args.curves {
            object["roc"] = serde_json::to_value(binary::roc_curve(&y, &s)?)?;
            let thresholds: Vec<f64> = (1..100).map(|percent| f64::from(percent) / 100.0).collect();
            object["decision_curve"] = serde_json::to_value(binary::net_benefit(&y, &s, &thresholds)?)?;
            object["calibration_bins"] = serde_json::to_value(calibration::calibration_bins(&y, &s, 10))?;
        }
        Ok(object)
    };
    let all_rows: Vec<usize> = (0..table.n_rows()).collect();
    let mut output = json!({ "pooled": describe(&all_rows)? });
    if let Some(site_column) = &args.site {
        let mut sites = serde_json::Map::new();
        for (site, rows) in rows_by_site(&table, site_column)? {
            sites.insert(
                site.clone(),
                describe(&rows).with_context(|| format!("site '{site}'"))?,
            );
        }
        output["sites"] = Value::Object(sites);
    }
    Ok(output)
}

/// The JSON of `stats kappa`.
pub fn kappa_report(args: &KappaArgs) -> anyhow::Result<Value> {
    let table = Table::read(&args.input)?;
    let truth = table.code_column(&args.truth, args.k)?;
    let predicted = table.code_column(&args.pred, args.k)?;
    Ok(serde_json::to_value(kappa::cohen_kappa(
        &truth, &predicted, args.k,
    )?)?)
}

/// Row indices grouped by the text of a site column, sites in sorted order.
pub fn rows_by_site(table: &Table, site_column: &str) -> anyhow::Result<BTreeMap<String, Vec<usize>>> {
    // An empty cell is a missing site, not a site called "": refused, naming the column and line.
    table.parsed_column(site_column, non_empty)?;
    let mut sites: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (row, site) in table.text_column(site_column)?.into_iter().enumerate() {
        sites.entry(site.to_owned()).or_default().push(row);
    }
    Ok(sites)
}

/// A cell that must hold a value (a site, a category level).
pub(crate) fn non_empty(cell: &str) -> Result<(), String> {
    if cell.is_empty() {
        Err("missing value".to_owned())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is a failed test.
    use super::*;

    #[test]
    fn an_empty_site_cell_is_refused_by_column_and_line_not_taken_as_a_site() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("scores.csv");
        std::fs::write(&file, "site,y,score\nA,1,0.9\n,0,0.2\nB,0,0.1\n").unwrap();
        let table = Table::read(&file).unwrap();
        let error = format!("{:#}", rows_by_site(&table, "site").unwrap_err());
        assert!(error.contains("'site'") && error.contains("line 3"), "{error}");
        assert!(error.contains("missing value"), "{error}");

        std::fs::write(&file, "site,y,score\nA,1,0.9\nB,0,0.2\nA,0,0.1\n").unwrap();
        let table = Table::read(&file).unwrap();
        let sites = rows_by_site(&table, "site").unwrap();
        assert_eq!(sites.get("A").unwrap(), &vec![0, 2]);
        assert_eq!(sites.get("B").unwrap(), &vec![1]);
    }
}
