//! `fedlnm-node stats logistic`: adjusted odds ratios by logistic regression on a CSV file, either on
//! all rows at once or, with `--site`, by the federated algorithm (sites only share sums).

use super::stats::non_empty;
use anyhow::Context as _;
use fedlnm_shared::stats::design::{DesignSpec, TermColumn, TermSpec};
use fedlnm_shared::stats::logistic::{self, FitOptions, LogisticFit, SiteRows, SiteSummary};
use fedlnm_shared::table::{InputError, Table};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

/// Adjusted odds ratios: logistic regression of a 0/1 outcome on several covariates.
///
/// Prints one JSON object: the number of rows, the outcome rate, the fit status, the log-likelihood
/// and, per covariate, the coefficient, standard error, Wald z, p-value, odds ratio and its 95% CI.
/// The status is "ok", "separation" (some covariate predicts the outcome perfectly: no odds ratio can
/// be estimated, so none is printed) or "not_converged". Undefined values are printed as null.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Output: one JSON object. \"status\" is \"ok\", \"separation\" (a covariate \
    predicts the outcome perfectly in some patients, so no odds ratio exists and none is printed) or \
    \"not_converged\". Undefined values are null.\n\nExample:\n  fedlnm-node stats logistic --input \
    patients.csv --outcome lnm \\\n      --terms age,male,max_diameter_mm,location --reference location=lower \
    --site hospital"
)]
pub struct LogisticArgs {
    /// CSV file with a header row and one row per patient.
    #[arg(long, value_name = "FILE")]
    pub input: PathBuf,

    /// Column holding the outcome: 1 = lymph node metastasis, 0 = none. Both values must occur.
    #[arg(long, value_name = "COLUMN")]
    pub outcome: String,

    /// Covariate columns, comma-separated (or the option repeated). A column of numbers enters the model
    /// as is; a column of text (for example location = lower/middle/upper) enters as one 0/1 indicator
    /// per level, named COLUMN_LEVEL, compared with a reference level.
    #[arg(long, value_name = "COLUMNS", value_delimiter = ',', required = true)]
    pub terms: Vec<String>,

    /// Reference level of a text covariate, as COLUMN=LEVEL (for example location=lower); repeat the
    /// option or separate with commas. Default: the first level in alphabetical order. Naming a column
    /// here also makes it categorical.
    #[arg(long, value_name = "COLUMN=LEVEL", value_delimiter = ',', value_parser = parse_reference)]
    pub reference: Vec<(String, String)>,

    /// Covariates to treat as categories even though they hold numbers (for example a scanner code
    /// 1/2/3), comma-separated.
    #[arg(long, value_name = "COLUMNS", value_delimiter = ',')]
    pub categorical: Vec<String>,

    /// Column naming each row's hospital. The pooled fit is then computed the federated way (each
    /// hospital contributes only sums, never rows), and each hospital's row count and outcome rate is
    /// printed beside it.
    #[arg(long, value_name = "COLUMN")]
    pub site: Option<String>,

    /// With --site: a hospital with fewer rows than this refuses to contribute (disclosure control),
    /// and the command fails naming it.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub min_site_rows: u64,

    /// Maximum number of Newton–Raphson iterations.
    #[arg(long, value_name = "N", default_value_t = logistic::MAX_ITERATIONS)]
    pub max_iterations: usize,
}

/// The JSON report of `stats logistic`.
pub fn report(args: &LogisticArgs) -> anyhow::Result<Value> {
    let table = Table::read(&args.input)?;
    let outcome = table.binary_column(&args.outcome)?;
    let n_positive = outcome.iter().filter(|&&y| y).count();
    if n_positive == 0 || n_positive == outcome.len() {
        let value = u8::from(n_positive > 0);
        return Err(table
            .column_error(
                &args.outcome,
                format!("every row has outcome {value}: a logistic regression needs both 0 and 1"),
            )
            .into());
    }
    let model = ModelColumns::read(&table, args)?;
    let spec = DesignSpec::new(model.specs.clone())
        .with_context(|| format!("{}: invalid model", table.file().display()))?;
    let term_columns: Vec<TermColumn<'_>> = model
        .values
        .iter()
        .zip(&model.level_refs)
        .map(|(values, levels)| match values {
            Some(numbers) => TermColumn::Numeric(numbers),
            None => TermColumn::Categorical(levels),
        })
        .collect();
    let design = spec
        .build(table.n_rows(), &term_columns)
        .with_context(|| format!("{}: cannot build the design matrix", table.file().display()))?;
    let options = FitOptions {
        max_iterations: args.max_iterations,
        ..FitOptions::default()
    };
    let cannot_fit = || format!("{}: cannot fit the logistic regression", table.file().display());

    let (fit, sites) = match &args.site {
        None => (
            logistic::fit(&design, &outcome, options).with_context(cannot_fit)?,
            None,
        ),
        Some(site_column) => {
            let sites: Vec<SiteRows> = super::stats::rows_by_site(&table, site_column)?
                .into_iter()
                .map(|(site, rows)| SiteRows {
                    site,
                    design: design.select_rows(&rows),
                    outcome: rows.iter().map(|&row| outcome[row]).collect(),
                })
                .collect();
            let federated =
                logistic::fit_federated(&sites, options, args.min_site_rows).with_context(cannot_fit)?;
            (federated.pooled, Some(federated.sites))
        }
    };
    Ok(render(&fit, &spec, sites.as_deref()))
}

/// The covariates read from the table: per term its spec and either numbers or levels.
struct ModelColumns<'t> {
    specs: Vec<TermSpec>,
    values: Vec<Option<Vec<f64>>>,
    level_refs: Vec<Vec<&'t str>>,
}

impl<'t> ModelColumns<'t> {
    fn read(table: &'t Table, args: &LogisticArgs) -> Result<Self, InputError> {
        let mut references: BTreeMap<&str, &str> = BTreeMap::new();
        for (column, level) in &args.reference {
            if !args.terms.contains(column) {
                return Err(table.column_error(column, "has a --reference but is not listed in --terms"));
            }
            if references
                .insert(column, level)
                .is_some_and(|previous| previous != level)
            {
                return Err(table.column_error(column, "has two different --reference levels"));
            }
        }
        for column in &args.categorical {
            if !args.terms.contains(column) {
                return Err(table.column_error(column, "is listed in --categorical but not in --terms"));
            }
        }
        let mut model = Self {
            specs: Vec::new(),
            values: Vec::new(),
            level_refs: Vec::new(),
        };
        for (index, column) in args.terms.iter().enumerate() {
            if args.terms[..index].contains(column) {
                return Err(table.column_error(column, "is listed twice in --terms"));
            }
            if *column == args.outcome || args.site.as_ref() == Some(column) {
                return Err(table.column_error(column, "is the outcome or the site column, not a covariate"));
            }
            let cells = table.text_column(column)?;
            let categorical = args.categorical.contains(column)
                || references.contains_key(column.as_str())
                || cells.iter().all(|cell| cell.parse::<f64>().is_err());
            if categorical {
                table.parsed_column(column, non_empty)?;
                let levels = cells;
                let declared: BTreeSet<&str> = levels.iter().copied().collect();
                let declared: Vec<String> = declared.into_iter().map(str::to_owned).collect();
                let reference = match references.get(column.as_str()) {
                    Some(level) if declared.iter().any(|d| d == level) => (*level).to_owned(),
                    Some(level) => {
                        return Err(table.column_error(
                            column,
                            format!(
                                "reference level '{level}' does not occur (levels: {})",
                                declared.join(", ")
                            ),
                        ));
                    }
                    // `declared` is not empty: the table has at least one row and no cell is empty.
                    None => declared.first().cloned().unwrap_or_default(),
                };
                model
                    .specs
                    .push(TermSpec::categorical(column.clone(), declared, reference));
                model.values.push(None);
                model.level_refs.push(levels);
            } else {
                let numbers = table.parsed_column(column, |cell| {
                    fedlnm_shared::table::parse_finite(cell).map_err(|problem| {
                        format!("{problem} (if this column holds categories, list it in --categorical)")
                    })
                })?;
                model.specs.push(TermSpec::numeric(column.clone()));
                model.values.push(Some(numbers));
                model.level_refs.push(Vec::new());
            }
        }
        Ok(model)
    }
}

/// The output object: pooled fit, terms keyed by design-column name, references, sites.
fn render(fit: &LogisticFit, spec: &DesignSpec, sites: Option<&[SiteSummary]>) -> Value {
    let mut terms = Map::new();
    for (index, term) in fit.terms.iter().enumerate() {
        let mut entry = json!({ "coef": term.coef, "se": term.se, "z": term.z, "p": term.p });
        if index > 0 {
            entry["or"] = json!(term.or);
            entry["or_ci_lower"] = json!(term.or_ci_lower);
            entry["or_ci_upper"] = json!(term.or_ci_upper);
        }
        terms.insert(term.name.clone(), entry);
    }
    let references: Map<String, Value> = spec
        .references()
        .map(|(column, level)| (column.to_owned(), json!(level)))
        .collect();
    let sites = sites.map(|sites| {
        sites
            .iter()
            .map(|s| {
                (
                    s.site.clone(),
                    json!({ "n": s.n, "n_positive": s.n_positive, "outcome_rate": s.outcome_rate }),
                )
            })
            .collect::<Map<String, Value>>()
    });
    json!({
        "n": fit.n,
        "n_positive": fit.n_positive,
        "outcome_rate": fit.outcome_rate,
        "status": fit.status,
        "loglik": fit.loglik,
        "iterations": fit.iterations,
        "separation": fit.separation,
        "term_order": spec.column_names(),
        "references": references,
        "terms": terms,
        "sites": sites,
        "method": if sites.is_some() { "federated Newton-Raphson (sites share only sums)" } else { "Newton-Raphson" },
    })
}

fn parse_reference(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((column, level)) if !column.trim().is_empty() && !level.trim().is_empty() => {
            Ok((column.trim().to_owned(), level.trim().to_owned()))
        }
        _ => Err(format!(
            "expected COLUMN=LEVEL (for example location=lower), got '{text}'"
        )),
    }
}
