//! The study's federated analyses of clinical factors: crude and adjusted odds ratios of an outcome
//! (LNM by default) by logistic regression, fitted by Newton–Raphson that the aggregator drives while
//! every site answers each step with the sums of its own rows ([`SiteContribution`]: score,
//! information, log-likelihood, counts), never a row; and the aggregator sees those sums only added
//! over the participants, through a secure sum ([`ring`]).
//!
//! - [`AnalysisConfig`]: one `[[analysis]]` of `aggregator.toml` (outcome, terms from [`fields`],
//!   reference levels, the disclosure threshold), checked at load ([`AnalysisConfig::check`]).
//! - [`AnalysisRequest`] / [`AnalysisAnswer`]: what travels each step. Step 0: a site joins with its
//!   size and events (the report's per-site table) or refuses with the reason. Every later step is
//!   one Newton step of the fits still running, at their β ([`FitRequest`]), with the configuration
//!   of its secure sum ([`SecureStep`]); a site answers with its size again and its masked
//!   contributions ([`ring::encode`]), or refuses.
//! - [`site_step`]: the site's side, on its manifest's labelled patients, under its own
//!   [`SitePolicy`]: a site with fewer rows than the larger of the study's and its own threshold
//!   refuses and says so, and a request for anything but the configured fits is refused.
//! - [`AnalysisRun`]: the coordinator's side, pure (no transport): one Newton coordinator per fit (the
//!   adjusted model and one crude model per term, run side by side so that each step is one exchange),
//!   the per-site n and outcome rate with Wilson intervals, and the [`AnalysisResult`].

pub mod fields;
pub mod ring;
mod run;

pub use run::{
    AnalysisResult, AnalysisRun, FitOutcome, Progress, RingSum, RunError, SiteExclusion, SiteRate,
};

use crate::data::PatientRecord;
use crate::data::report::PathologyLabels;
use crate::secagg::{SecAggConfig, SiteId};
use crate::stats::design::{DesignMatrix, DesignSpec, TermColumn};
use crate::stats::logistic::{self, LogisticError, SiteContribution};
use fields::{FieldKind, FieldValue};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The outcome an analysis models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Any cervical lymph node metastasis.
    #[default]
    Lnm,
    /// Central compartment metastasis.
    LnmCentral,
    /// Lateral compartment metastasis.
    LnmLateral,
}

impl Outcome {
    /// The outcome of one patient's pathology.
    #[must_use]
    pub fn of(self, labels: &PathologyLabels) -> bool {
        match self {
            Self::Lnm => labels.lnm,
            Self::LnmCentral => labels.lnm_central,
            Self::LnmLateral => labels.lnm_lateral,
        }
    }

    /// The manifest column of the outcome.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Lnm => "lnm",
            Self::LnmCentral => "lnm_central",
            Self::LnmLateral => "lnm_lateral",
        }
    }
}

/// The smallest disclosure threshold a study may set: below it a site's sums say too much about
/// single patients.
pub const MIN_DISCLOSURE_ROWS: u64 = 5;
/// The most Newton steps a site answers for one analysis (the engine converges in under 10 on any
/// identifiable model; a coordinator asking for more is refused).
pub const MAX_STEPS: u32 = 100;

fn default_min_site_rows() -> u64 {
    10
}

fn default_max_iterations() -> u32 {
    u32::try_from(logistic::MAX_ITERATIONS).unwrap_or(MAX_STEPS)
}

/// One `[[analysis]]` of `aggregator.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnalysisConfig {
    /// A short name (letters, digits, `-`, `_`): the result's file name and the report's heading.
    pub name: String,
    #[serde(default)]
    pub outcome: Outcome,
    /// The terms of the adjusted model, from [`fields::FIELDS`]; each also gets its crude model.
    pub terms: Vec<String>,
    /// Reference levels of categorical terms (`pole = "lower"`); default: the first level.
    #[serde(default)]
    pub reference: BTreeMap<String, String>,
    /// The disclosure threshold: a site with fewer labelled patients refuses to take part.
    #[serde(default = "default_min_site_rows")]
    pub min_site_rows: u64,
    /// Newton steps at most per fit.
    #[serde(default = "default_max_iterations")]
    pub max_iterations: u32,
}

impl AnalysisConfig {
    /// The study's registered analysis (clinical.md): LNM on the pre-operative factors of the
    /// literature, each a 0/1 indicator, so that its odds ratios read as published ones.
    #[must_use]
    pub fn registered() -> Self {
        let terms = [
            "male",
            "age_under_45",
            "size_at_least_10mm",
            "multifocal",
            "upper_pole",
            "capsule_contact_over_25",
            "microcalcification",
        ];
        Self {
            name: "clinical-factors".to_owned(),
            outcome: Outcome::Lnm,
            terms: terms.iter().map(|&t| t.to_owned()).collect(),
            reference: BTreeMap::new(),
            min_site_rows: default_min_site_rows(),
            max_iterations: default_max_iterations(),
        }
    }

    /// Checks the configuration; `Err((key, problem))` names the key at fault (relative to the
    /// analysis's table).
    ///
    /// # Errors
    /// An unknown or repeated term, a reference of a term that is not categorical or not in the
    /// model, an unknown level, a threshold below [`MIN_DISCLOSURE_ROWS`], an iteration limit outside
    /// 1..=[`MAX_STEPS`], or a name unfit for a file name.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !name_ok {
            return Err((
                "name",
                format!(
                    "'{}' must be 1 to 64 letters, digits, '-' or '_' (it names the result's file)",
                    self.name
                ),
            ));
        }
        if self.terms.is_empty() {
            return Err(("terms", "the analysis has no term".to_owned()));
        }
        for (index, term) in self.terms.iter().enumerate() {
            if fields::field(term).is_none() {
                return Err((
                    "terms",
                    format!("unknown field '{term}' (known: {})", fields::field_names()),
                ));
            }
            if self.terms[..index].contains(term) {
                return Err(("terms", format!("'{term}' is listed twice")));
            }
        }
        for (column, level) in &self.reference {
            let Some(field) = fields::field(column).filter(|_| self.terms.contains(column)) else {
                return Err(("reference", format!("'{column}' is not a term of the analysis")));
            };
            let FieldKind::Categorical(levels) = field.kind else {
                return Err((
                    "reference",
                    format!("'{column}' is numeric: only a categorical term has a reference level"),
                ));
            };
            if !levels.contains(&level.as_str()) {
                return Err((
                    "reference",
                    format!("'{level}' is not a level of '{column}' ({})", levels.join(", ")),
                ));
            }
        }
        if self.min_site_rows < MIN_DISCLOSURE_ROWS {
            return Err((
                "min_site_rows",
                format!(
                    "{} is below the smallest disclosure threshold, {MIN_DISCLOSURE_ROWS}",
                    self.min_site_rows
                ),
            ));
        }
        if !(1..=MAX_STEPS).contains(&self.max_iterations) {
            return Err((
                "max_iterations",
                format!("{} must be 1 to {MAX_STEPS}", self.max_iterations),
            ));
        }
        self.design_spec(&self.terms)
            .map(|_| ())
            .map_err(|e| ("terms", e.to_string()))
    }

    /// The design of a model of `terms` (a subset of [`Self::terms`]), with this analysis's
    /// reference levels.
    ///
    /// # Errors
    /// An unknown term or a duplicate design column.
    pub fn design_spec(&self, terms: &[String]) -> Result<DesignSpec, LogisticError> {
        let specs = terms
            .iter()
            .map(|term| {
                fields::field(term)
                    .map(|field| field.term(self.reference.get(term).map(String::as_str)))
                    .ok_or_else(|| LogisticError::MalformedContribution {
                        problem: format!("unknown field '{term}'"),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        DesignSpec::new(specs)
    }

    /// The fits of the analysis: the adjusted model (every term) first, then one crude model per
    /// term, in the order of [`Self::terms`].
    #[must_use]
    pub fn fits(&self) -> Vec<Vec<String>> {
        std::iter::once(self.terms.clone())
            .chain(self.terms.iter().map(|term| vec![term.clone()]))
            .collect()
    }
}

/// One fit of a step: its terms and the β at which the site computes its contribution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FitRequest {
    pub terms: Vec<String>,
    pub beta: Vec<f64>,
}

/// A step of an analysis, as the aggregator sends it to every site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnalysisRequest {
    pub analysis: AnalysisConfig,
    /// 0-based; at step 0 a site joins (its size) or refuses; every later step is a Newton step.
    pub step: u32,
    /// The fits still running, each one of [`AnalysisConfig::fits`].
    pub fits: Vec<FitRequest>,
    /// The secure sum of a Newton step; `None` at step 0.
    pub sum: Option<Box<SecureStep>>,
}

/// How a Newton step's sums reach the aggregator: a ring instance of secure aggregation between the
/// participants, of the layout [`ring::tensor_specs`] of the step's fits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecureStep {
    pub config: SecAggConfig,
    /// Each participant's protocol id.
    pub ids: BTreeMap<String, SiteId>,
    /// The participants' labelled rows in all (their step-0 sizes): the scales of [`ring`].
    pub rows: u64,
}

/// A site's answer to one step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AnalysisAnswer {
    /// Step 0: the site takes part with `n` labelled patients, `events` of them with the outcome.
    Joined { n: u64, events: u64 },
    /// A Newton step: the site's size again, and its masked contributions for the step's secure sum
    /// (a secure-aggregation `MaskedInput`, in the protocol's payload encoding).
    Masked { n: u64, events: u64, input: Vec<u8> },
    /// The site does not take part, and says why.
    Refused { reason: String },
}

/// What a site computed for one step on its own rows: its size and one contribution per requested
/// fit (never sent as such: only masked, inside the step's secure sum).
#[derive(Debug, Clone, PartialEq)]
pub struct SiteStep {
    pub n: u64,
    pub events: u64,
    pub contributions: Vec<SiteContribution>,
}

/// A site's own limits on what it answers: `[analysis]` of its `node.toml`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SitePolicy {
    /// Whether the site takes part in the study's analyses at all.
    pub enabled: bool,
    /// The site's own disclosure threshold; the larger of it and the study's applies.
    pub min_rows: u64,
}

impl SitePolicy {
    /// Checks the settings; `Err((key, problem))` names the key (under `analysis.`).
    ///
    /// # Errors
    /// A threshold below [`MIN_DISCLOSURE_ROWS`].
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.min_rows < MIN_DISCLOSURE_ROWS {
            return Err((
                "min_rows",
                format!(
                    "{} is below the smallest disclosure threshold, {MIN_DISCLOSURE_ROWS}",
                    self.min_rows
                ),
            ));
        }
        Ok(())
    }
}

/// Checks the `[[analysis]]` tables of `aggregator.toml`: each one, and that no name repeats.
/// `Err((key, problem))` names the key, as `analysis[INDEX].KEY`.
///
/// # Errors
/// The first problem found.
pub fn check_all(analyses: &[AnalysisConfig]) -> Result<(), (String, String)> {
    for (index, analysis) in analyses.iter().enumerate() {
        analysis
            .check()
            .map_err(|(key, problem)| (format!("analysis[{index}].{key}"), problem))?;
        if analyses[..index].iter().any(|a| a.name == analysis.name) {
            return Err((
                format!("analysis[{index}].name"),
                format!("two analyses are named '{}'", analysis.name),
            ));
        }
    }
    Ok(())
}

impl Default for SitePolicy {
    fn default() -> Self {
        Self {
            enabled: true,
            min_rows: default_min_site_rows(),
        }
    }
}

/// The site's step on its patients `records` (those without pathology labels are not in the
/// analysis): its size and contributions to every requested fit.
///
/// # Errors
/// Whatever is wrong with the request or the data, in words: the site refuses with it.
pub fn site_step(
    records: &[PatientRecord],
    request: &AnalysisRequest,
    policy: SitePolicy,
) -> Result<SiteStep, String> {
    let analysis = &request.analysis;
    if !policy.enabled {
        return Err(
            "this site does not take part in analyses (analysis.enabled = false in its node.toml)".into(),
        );
    }
    analysis
        .check()
        .map_err(|(key, problem)| format!("the analysis is invalid: {key}: {problem}"))?;
    // Step 0 joins; then at most max_iterations + 1 Newton steps (the last one evaluates the optimum).
    if request.step > analysis.max_iterations.min(MAX_STEPS) + 1 {
        return Err(format!(
            "step {} is past the analysis's limit of {} Newton steps",
            request.step, analysis.max_iterations
        ));
    }
    match (&request.sum, request.step) {
        (None, 0) => {}
        (Some(sum), step) if step > 0 => {
            if sum.ids.len() < 2 || sum.config.threshold < 2 {
                return Err(format!(
                    "the secure sum of step {step} is between {} site(s) with threshold {}: a sum over \
                     one site would be this site's own sums",
                    sum.ids.len(),
                    sum.config.threshold
                ));
            }
        }
        (_, step) => {
            return Err(format!(
                "step {step} {} a secure sum: step 0 has none, every Newton step has one",
                if request.sum.is_some() { "has" } else { "lacks" }
            ));
        }
    }
    let allowed = analysis.fits();
    for fit in &request.fits {
        if !allowed.contains(&fit.terms) {
            return Err(format!(
                "a fit of [{}] is not one of the analysis's (the adjusted model or one crude model per term)",
                fit.terms.join(", ")
            ));
        }
    }
    if request.fits.is_empty() || request.fits.len() > allowed.len() {
        return Err(format!(
            "{} fits asked, expected 1 to {}",
            request.fits.len(),
            allowed.len()
        ));
    }
    let labelled = labelled(records, analysis.outcome);
    let threshold = analysis.min_site_rows.max(policy.min_rows);
    let n = labelled.len() as u64;
    if n < threshold {
        return Err(format!(
            "{n} labelled patients is below the disclosure threshold of {threshold}: the site does not contribute"
        ));
    }
    let outcome: Vec<bool> = labelled.iter().map(|(_, y)| *y).collect();
    let contributions = request
        .fits
        .iter()
        .map(|fit| {
            let design = design(analysis, &fit.terms, &labelled).map_err(|e| e.to_string())?;
            logistic::site_contribution(&design, &outcome, &fit.beta, threshold).map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(SiteStep {
        n,
        events: outcome.iter().filter(|&&y| y).count() as u64,
        contributions,
    })
}

/// The patients with pathology labels, with their outcome.
fn labelled(records: &[PatientRecord], outcome: Outcome) -> Vec<(&PatientRecord, bool)> {
    records
        .iter()
        .filter_map(|r| r.labels.as_ref().map(|labels| (r, outcome.of(labels))))
        .collect()
}

fn design(
    analysis: &AnalysisConfig,
    terms: &[String],
    rows: &[(&PatientRecord, bool)],
) -> Result<DesignMatrix, LogisticError> {
    let spec = analysis.design_spec(terms)?;
    let values: Vec<Vec<FieldValue>> = terms
        .iter()
        .map(|term| {
            let field = fields::field(term).ok_or_else(|| LogisticError::MalformedContribution {
                problem: format!("unknown field '{term}'"),
            })?;
            Ok(rows.iter().map(|(record, _)| field.value(record)).collect())
        })
        .collect::<Result<_, LogisticError>>()?;
    let numbers: Vec<Vec<f64>> = values
        .iter()
        .map(|column| {
            column
                .iter()
                .map(|v| match v {
                    FieldValue::Number(x) => *x,
                    FieldValue::Level(_) => f64::NAN,
                })
                .collect()
        })
        .collect();
    let levels: Vec<Vec<&str>> = values
        .iter()
        .map(|column| {
            column
                .iter()
                .map(|v| match v {
                    FieldValue::Level(level) => *level,
                    FieldValue::Number(_) => "",
                })
                .collect()
        })
        .collect();
    let columns: Vec<TermColumn<'_>> = terms
        .iter()
        .enumerate()
        .map(|(j, term)| match fields::field(term).map(|f| f.kind) {
            Some(FieldKind::Categorical(_)) => TermColumn::Categorical(&levels[j]),
            _ => TermColumn::Numeric(&numbers[j]),
        })
        .collect();
    spec.build(rows.len(), &columns)
}

/// The design matrix and outcome of `records` (labelled only) for the model of `terms`: what a site
/// computes its contributions on, and what a pooled fit of every row uses (tests, the report).
///
/// # Errors
/// As [`DesignSpec::build`].
pub fn pooled_rows(
    analysis: &AnalysisConfig,
    terms: &[String],
    records: &[PatientRecord],
) -> Result<(DesignMatrix, Vec<bool>), LogisticError> {
    let labelled = labelled(records, analysis.outcome);
    let design = design(analysis, terms, &labelled)?;
    Ok((design, labelled.iter().map(|(_, y)| *y).collect()))
}
