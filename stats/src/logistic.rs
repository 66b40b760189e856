//! Logistic regression by Newton–Raphson (as statsmodels `Logit(...).fit(method="newton")`), run as a
//! federation (the DataSHIELD `ds.glm` scheme): sites send per-step sums, a coordinator takes the step.
//!
//! There is one engine: a local fit is the federated fit with a single site. Each Newton step the
//! coordinator sends β to the sites; each site returns a [`SiteContribution`] (Xᵀ(y−μ), XᵀWX, its
//! log-likelihood, counts); the [`NewtonCoordinator`] adds them and steps. No row ever leaves a site.
//!
//! Separation (complete or quasi-complete) is diagnosed from the same aggregates, so that the local and
//! the federated path always agree: coefficients that keep moving by a constant amount per step (no
//! quadratic convergence) while some rows are predicted within [`BOUNDARY_EPS`] of their outcome, or an
//! information matrix that turns singular while such rows exist. A fit that is not `ok` reports no
//! coefficient, SE, p-value or odds ratio at all.

use super::design::DesignMatrix;
use super::normal::{Z_95, normal_two_sided_p};
use super::sum::CompensatedSum;
use nalgebra::{DMatrix, DVector};
use serde::{Deserialize, Serialize};

/// Convergence tolerance on max |Δβ| (statistics.md).
pub const TOLERANCE: f64 = 1e-12;
/// Default maximum number of Newton steps (statsmodels' default `maxiter`).
pub const MAX_ITERATIONS: usize = 100;
/// A row counts as perfectly predicted when its fitted probability is within this of its outcome.
pub const BOUNDARY_EPS: f64 = 1e-8;
/// Separation is declared after this many consecutive iterates with perfectly predicted rows whose
/// steps did not shrink (each step at least [`NO_PROGRESS_RATIO`] of the previous one).
const SEPARATION_WINDOW: usize = 10;
/// Newton converges quadratically near a finite optimum; a step ratio above this is no convergence.
const NO_PROGRESS_RATIO: f64 = 0.5;
/// Relative residual variance below which a design column is a linear combination of earlier ones.
const RANK_TOLERANCE: f64 = 1e-10;
/// A term takes part in the separating direction when its (column-scaled) share of the last step is
/// above this.
const DIRECTION_SHARE: f64 = 1e-3;

/// What can go wrong in building a design or fitting a model. Each variant names what and where.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LogisticError {
    /// A categorical term's reference level is not one of its declared levels.
    #[error("reference level '{reference}' of '{column}' is not among its levels ({})", declared.join(", "))]
    UnknownReference {
        column: String,
        reference: String,
        declared: Vec<String>,
    },
    /// A row holds a level that the term did not declare.
    #[error("'{column}' at row {row} is '{level}', not a declared level ({})", declared.join(", "))]
    UndeclaredLevel {
        column: String,
        row: usize,
        level: String,
        declared: Vec<String>,
    },
    /// Two design columns (or two levels) with one name.
    #[error("the model names '{name}' twice")]
    DuplicateName { name: String },
    /// A numeric term's value is NaN or infinite.
    #[error("'{column}' at row {row} is not a finite number")]
    NotFinite { column: String, row: usize },
    /// A finite value so large that the fit's sums (XᵀWX, Xᵀ(y−μ), the log-likelihood) overflow.
    /// `row` is 0-based among the rows given (shown 1-based).
    #[error(
        "'{column}' is {value:e} in row {} (counting data rows from 1): too large, the fit's sums overflow; rescale the column",
        row + 1
    )]
    TooLarge { column: String, row: usize, value: f64 },
    /// A column has the wrong number of rows.
    #[error("'{what}' has {got} rows, expected {expected}")]
    LengthMismatch {
        what: String,
        got: usize,
        expected: usize,
    },
    /// The design was given a different number of columns than it has terms.
    #[error("the model has {expected} terms but {got} columns were given")]
    TermCount { expected: usize, got: usize },
    /// A numeric column given for a categorical term, or the reverse.
    #[error("'{column}' was given with the wrong kind of values (numeric vs categorical)")]
    TermKind { column: String },
    /// The pooled design is not of full rank: the model cannot be identified.
    #[error("the pooled design is rank-deficient: {details}")]
    RankDeficient { terms: Vec<String>, details: String },
    /// A site holds fewer rows than the disclosure threshold and refuses to contribute.
    #[error("{n} rows is below the disclosure threshold of {min_rows}: the site does not contribute")]
    BelowDisclosureThreshold { n: u64, min_rows: u64 },
    /// A contribution or a β of the wrong size, or with a non-finite number.
    #[error("malformed contribution: {problem}")]
    MalformedContribution { problem: String },
    /// No site at all.
    #[error("no site contributed: a fit needs at least one site with rows")]
    NoSites,
    /// The coordinator was asked to go on after it finished.
    #[error("the fit has already finished")]
    Finished,
    /// Something went wrong at one named site.
    #[error("site '{site}'")]
    Site {
        site: String,
        source: Box<LogisticError>,
    },
}

/// What a site sends the coordinator for one Newton step, computed on its own rows at the β it was sent.
/// Only sums and counts: no row-level value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiteContribution {
    /// Score Xᵀ(y − μ), one entry per design column.
    pub gradient: Vec<f64>,
    /// Information XᵀWX, W = diag(μ(1−μ)), p×p row-major.
    pub information: Vec<f64>,
    /// Σ y log μ + (1−y) log(1−μ).
    pub loglik: f64,
    /// Rows.
    pub n: u64,
    /// Rows with outcome 1.
    pub n_positive: u64,
    /// Rows whose fitted probability is within [`BOUNDARY_EPS`] of their own outcome (perfectly predicted).
    pub n_boundary: u64,
    /// Rows on the wrong side of (or exactly at) probability ½.
    pub n_misclassified: u64,
}

/// Computes a site's [`SiteContribution`] at `beta`. Refuses (typed error) when the site has fewer than
/// `min_rows` rows. The site's own design may be rank-deficient (for example no row of some level):
/// only the pooled sum has to be of full rank.
pub fn site_contribution(
    design: &DesignMatrix,
    outcome: &[bool],
    beta: &[f64],
    min_rows: u64,
) -> Result<SiteContribution, LogisticError> {
    let n = design.n_rows();
    if outcome.len() != n {
        return Err(LogisticError::LengthMismatch {
            what: "outcome".into(),
            got: outcome.len(),
            expected: n,
        });
    }
    let p = design.n_columns();
    if beta.len() != p {
        return Err(LogisticError::MalformedContribution {
            problem: format!("β has {} entries, the design has {p} columns", beta.len()),
        });
    }
    if beta.iter().any(|b| !b.is_finite()) {
        return Err(LogisticError::MalformedContribution {
            problem: "β is not finite".into(),
        });
    }
    if (n as u64) < min_rows {
        return Err(LogisticError::BelowDisclosureThreshold {
            n: n as u64,
            min_rows,
        });
    }
    let mut gradient = vec![CompensatedSum::default(); p];
    let mut information = vec![CompensatedSum::default(); p * p];
    let mut loglik = CompensatedSum::default();
    let (mut n_positive, mut n_boundary, mut n_misclassified) = (0_u64, 0_u64, 0_u64);
    for (x, &y) in design.rows().zip(outcome) {
        let eta: f64 = x.iter().zip(beta).map(|(a, b)| a * b).sum();
        let fit = RowFit::new(eta, y);
        for j in 0..p {
            gradient[j].add(x[j] * fit.residual);
            let wx = fit.weight * x[j];
            for k in 0..=j {
                information[j * p + k].add(wx * x[k]);
            }
        }
        loglik.add(fit.loglik);
        n_positive += u64::from(y);
        n_boundary += u64::from(fit.residual.abs() < BOUNDARY_EPS);
        n_misclassified += u64::from(if y { eta <= 0.0 } else { eta >= 0.0 });
    }
    let mut information: Vec<f64> = information.iter().map(CompensatedSum::total).collect();
    for j in 0..p {
        for k in 0..j {
            information[k * p + j] = information[j * p + k];
        }
    }
    let contribution = SiteContribution {
        gradient: gradient.iter().map(CompensatedSum::total).collect(),
        information,
        loglik: loglik.total(),
        n: n as u64,
        n_positive,
        n_boundary,
        n_misclassified,
    };
    match overflowing_value(design, beta, &contribution) {
        Some(error) => Err(error),
        None => Ok(contribution),
    }
}

/// When a sum of `contribution` is not finite (every input is: the values grew too large), the
/// largest value of the columns those sums involve, with its column and row.
fn overflowing_value(
    design: &DesignMatrix,
    beta: &[f64],
    contribution: &SiteContribution,
) -> Option<LogisticError> {
    let p = design.n_columns();
    let mut involved = vec![false; p];
    for j in 0..p {
        involved[j] |= !contribution.gradient[j].is_finite();
        for k in 0..p {
            if !contribution.information[j * p + k].is_finite() {
                involved[j] = true;
                involved[k] = true;
            }
        }
    }
    if !involved.contains(&true) {
        if contribution.loglik.is_finite() {
            return None;
        }
        // The log-likelihood overflows through the linear predictor: every column takes part.
        involved.fill(true);
    }
    // The intercept is 1 in every row; it is named only when nothing else is involved.
    if involved.iter().skip(1).any(|&i| i) {
        involved[0] = false;
    }
    let mut largest: Option<(usize, usize, f64)> = None;
    for (row, x) in design.rows().enumerate() {
        for (column, (&value, &b)) in x.iter().zip(beta).enumerate() {
            let size = value.abs() * b.abs().max(1.0);
            if involved[column] && largest.is_none_or(|(_, _, best)| size > best) {
                largest = Some((row, column, size));
            }
        }
    }
    largest.map(|(row, column, _)| LogisticError::TooLarge {
        column: design.column_names()[column].clone(),
        row,
        value: design.row(row)[column],
    })
}

/// Options of the Newton iteration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FitOptions {
    /// Stop when every |Δβ_j| is at most this.
    pub tolerance: f64,
    /// At most this many Newton steps.
    pub max_iterations: usize,
}

impl Default for FitOptions {
    fn default() -> Self {
        Self {
            tolerance: TOLERANCE,
            max_iterations: MAX_ITERATIONS,
        }
    }
}

/// Outcome of a fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FitStatus {
    /// Converged to a finite maximum-likelihood estimate.
    Ok,
    /// Complete or quasi-complete separation: no finite estimate exists.
    Separation,
    /// Neither converged nor separated within the iteration limit.
    NotConverged,
}

/// Which separation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeparationKind {
    /// Every row is predicted perfectly by some linear combination of the terms.
    Complete,
    /// A subset of rows is predicted perfectly; the others lie on the separating hyperplane.
    QuasiComplete,
}

/// The separation diagnosis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Separation {
    pub kind: SeparationKind,
    /// Design columns whose coefficients diverge (the separating direction).
    pub terms: Vec<String>,
    /// Rows predicted perfectly at the last iterate.
    pub n_boundary: u64,
}

/// Estimates of one design column. All `None` unless the fit is `ok`; the odds-ratio fields are
/// `None` for `const` as well.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TermEstimate {
    pub name: String,
    pub coef: Option<f64>,
    pub se: Option<f64>,
    pub z: Option<f64>,
    pub p: Option<f64>,
    pub or: Option<f64>,
    pub or_ci_lower: Option<f64>,
    pub or_ci_upper: Option<f64>,
}

/// A fitted (or diagnosed) logistic regression.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogisticFit {
    pub status: FitStatus,
    pub n: u64,
    pub n_positive: u64,
    pub outcome_rate: f64,
    /// Log-likelihood at β̂; `None` unless `ok` (no finite maximiser exists otherwise).
    pub loglik: Option<f64>,
    /// Newton steps taken.
    pub iterations: usize,
    pub terms: Vec<TermEstimate>,
    pub separation: Option<Separation>,
}

/// What the coordinator says after a Newton iteration: the β of the next one, or the finished fit.
#[derive(Debug, Clone, PartialEq)]
pub enum NewtonStep {
    /// Send this β to every site and call [`NewtonCoordinator::update`] with their contributions.
    Continue(Vec<f64>),
    /// The fit is over.
    Finished(Box<LogisticFit>),
}

/// The coordinator of a (federated) Newton–Raphson fit. It never sees a row: only the sums of the
/// sites' [`SiteContribution`]s.
#[derive(Debug, Clone)]
pub struct NewtonCoordinator {
    names: Vec<String>,
    options: FitOptions,
    beta: Vec<f64>,
    iterations: usize,
    converged: bool,
    finished: bool,
    n: Option<u64>,
    /// Root mean square of each design column (from the information at β = 0), to compare steps.
    column_scale: Vec<f64>,
    last_step: Option<Vec<f64>>,
    /// Consecutive iterates with perfectly predicted rows and no shrinking of the step.
    stalled_with_boundary: usize,
}

impl NewtonCoordinator {
    /// A coordinator for the design columns `names` (`const` first), starting at β = 0.
    #[must_use]
    pub fn new(names: Vec<String>, options: FitOptions) -> Self {
        let p = names.len();
        Self {
            names,
            options,
            beta: vec![0.0; p],
            iterations: 0,
            converged: false,
            finished: false,
            n: None,
            column_scale: vec![1.0; p],
            last_step: None,
            stalled_with_boundary: 0,
        }
    }

    /// The β at which the sites must compute their next contributions.
    #[must_use]
    pub fn beta(&self) -> &[f64] {
        &self.beta
    }

    /// Adds the sites' contributions at [`Self::beta`] and either takes a Newton step or finishes.
    pub fn update(&mut self, contributions: &[SiteContribution]) -> Result<NewtonStep, LogisticError> {
        if self.finished {
            return Err(LogisticError::Finished);
        }
        let pooled = self.pool(contributions)?;
        if self.iterations == 0 {
            check_rank(&self.names, &pooled.information, pooled.n)?;
            let p = self.names.len();
            // At β = 0 every weight is ¼, so 4·I_jj/n is the mean square of column j.
            self.column_scale = (0..p)
                .map(|j| (4.0 * pooled.information[j * p + j] / pooled.n as f64).sqrt())
                .collect();
        }
        if self.converged {
            // Steps below the tolerance mean a finite maximiser: under separation the diverging
            // coefficients move by a roughly constant amount per step and never get here.
            return Ok(self.finish_converged(&pooled));
        }
        if pooled.n_boundary > 0 && self.stalled_with_boundary >= SEPARATION_WINDOW {
            return Ok(self.finish(FitStatus::Separation, &pooled));
        }
        if self.iterations >= self.options.max_iterations {
            return Ok(self.finish_unconverged(&pooled));
        }
        let Some(step) = newton_step(&pooled) else {
            return Ok(self.finish_unconverged(&pooled));
        };
        let step_size = max_abs(&step);
        let shrinking = self
            .last_step
            .as_ref()
            .is_some_and(|last| step_size < NO_PROGRESS_RATIO * max_abs(last));
        self.stalled_with_boundary = if pooled.n_boundary > 0 && !shrinking {
            self.stalled_with_boundary + 1
        } else {
            0
        };
        for (b, d) in self.beta.iter_mut().zip(&step) {
            *b += d;
        }
        self.iterations += 1;
        self.converged = step.iter().all(|d| d.abs() <= self.options.tolerance);
        self.last_step = Some(step);
        Ok(NewtonStep::Continue(self.beta.clone()))
    }

    fn pool(&mut self, contributions: &[SiteContribution]) -> Result<SiteContribution, LogisticError> {
        if contributions.is_empty() {
            return Err(LogisticError::NoSites);
        }
        let p = self.names.len();
        let mut gradient = vec![CompensatedSum::default(); p];
        let mut information = vec![CompensatedSum::default(); p * p];
        let mut loglik = CompensatedSum::default();
        let mut pooled = SiteContribution {
            gradient: Vec::new(),
            information: Vec::new(),
            loglik: 0.0,
            n: 0,
            n_positive: 0,
            n_boundary: 0,
            n_misclassified: 0,
        };
        for (index, contribution) in contributions.iter().enumerate() {
            let malformed = |problem: String| LogisticError::MalformedContribution {
                problem: format!("contribution {index}: {problem}"),
            };
            if contribution.gradient.len() != p || contribution.information.len() != p * p {
                return Err(malformed(format!(
                    "{} gradient and {} information entries, expected {p} and {}",
                    contribution.gradient.len(),
                    contribution.information.len(),
                    p * p
                )));
            }
            let all = contribution
                .gradient
                .iter()
                .chain(&contribution.information)
                .chain([&contribution.loglik]);
            if all.clone().any(|v| !v.is_finite()) {
                return Err(malformed("non-finite value".into()));
            }
            if contribution.n_positive > contribution.n
                || contribution.n_boundary > contribution.n
                || contribution.n_misclassified > contribution.n
            {
                return Err(malformed("a count exceeds n".into()));
            }
            for (acc, v) in gradient.iter_mut().zip(&contribution.gradient) {
                acc.add(*v);
            }
            for (acc, v) in information.iter_mut().zip(&contribution.information) {
                acc.add(*v);
            }
            loglik.add(contribution.loglik);
            pooled.n += contribution.n;
            pooled.n_positive += contribution.n_positive;
            pooled.n_boundary += contribution.n_boundary;
            pooled.n_misclassified += contribution.n_misclassified;
        }
        if pooled.n == 0 {
            return Err(LogisticError::NoSites);
        }
        match self.n {
            Some(n) if n != pooled.n => {
                return Err(LogisticError::MalformedContribution {
                    problem: format!("the sites held {n} rows in all before, {} now", pooled.n),
                });
            }
            _ => self.n = Some(pooled.n),
        }
        pooled.gradient = gradient.iter().map(CompensatedSum::total).collect();
        pooled.information = information.iter().map(CompensatedSum::total).collect();
        pooled.loglik = loglik.total();
        Ok(pooled)
    }

    fn finish_converged(&mut self, pooled: &SiteContribution) -> NewtonStep {
        let p = self.names.len();
        let information = DMatrix::from_row_slice(p, p, &pooled.information);
        let Some(inverse) = information.cholesky().map(|c| c.inverse()) else {
            // Converged yet singular information: no standard errors exist.
            return self.finish_unconverged(pooled);
        };
        let mut fit = self.finish_fit(FitStatus::Ok, pooled);
        fit.loglik = Some(pooled.loglik);
        for (j, term) in fit.terms.iter_mut().enumerate() {
            let coef = self.beta[j];
            let se = inverse[(j, j)].sqrt();
            let z = coef / se;
            term.coef = Some(coef);
            term.se = Some(se);
            term.z = Some(z);
            term.p = Some(normal_two_sided_p(z));
            if j > 0 {
                term.or = Some(coef.exp());
                term.or_ci_lower = Some((coef - Z_95 * se).exp());
                term.or_ci_upper = Some((coef + Z_95 * se).exp());
            }
        }
        NewtonStep::Finished(Box::new(fit))
    }

    fn finish_unconverged(&mut self, pooled: &SiteContribution) -> NewtonStep {
        let status = if pooled.n_boundary > 0 {
            FitStatus::Separation
        } else {
            FitStatus::NotConverged
        };
        self.finish(status, pooled)
    }

    fn finish(&mut self, status: FitStatus, pooled: &SiteContribution) -> NewtonStep {
        NewtonStep::Finished(Box::new(self.finish_fit(status, pooled)))
    }

    fn finish_fit(&mut self, status: FitStatus, pooled: &SiteContribution) -> LogisticFit {
        self.finished = true;
        let separation = (status == FitStatus::Separation).then(|| Separation {
            kind: if pooled.n_misclassified == 0 {
                SeparationKind::Complete
            } else {
                SeparationKind::QuasiComplete
            },
            terms: self.diverging_terms(),
            n_boundary: pooled.n_boundary,
        });
        LogisticFit {
            status,
            n: pooled.n,
            n_positive: pooled.n_positive,
            outcome_rate: pooled.n_positive as f64 / pooled.n as f64,
            loglik: None,
            iterations: self.iterations,
            terms: self
                .names
                .iter()
                .map(|name| TermEstimate {
                    name: name.clone(),
                    coef: None,
                    se: None,
                    z: None,
                    p: None,
                    or: None,
                    or_ci_lower: None,
                    or_ci_upper: None,
                })
                .collect(),
            separation,
        }
    }

    /// Terms with a non-negligible share of the last step, steps measured in units of each column's
    /// root mean square so that a covariate's scale does not matter.
    fn diverging_terms(&self) -> Vec<String> {
        let Some(step) = &self.last_step else {
            return Vec::new();
        };
        let scaled: Vec<f64> = step
            .iter()
            .zip(&self.column_scale)
            .map(|(d, s)| (d * s).abs())
            .collect();
        let largest = scaled.iter().copied().fold(0.0, f64::max);
        self.names
            .iter()
            .zip(&scaled)
            .filter(|(_, share)| largest > 0.0 && **share > DIRECTION_SHARE * largest)
            .map(|(name, _)| name.clone())
            .collect()
    }
}

/// One site's rows, for [`fit_federated`].
#[derive(Debug, Clone)]
pub struct SiteRows {
    pub site: String,
    pub design: DesignMatrix,
    pub outcome: Vec<bool>,
}

/// A site's size beside the pooled fit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiteSummary {
    pub site: String,
    pub n: u64,
    pub n_positive: u64,
    pub outcome_rate: f64,
}

/// The pooled fit by the federated algorithm, with each site's size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FederatedFit {
    pub pooled: LogisticFit,
    pub sites: Vec<SiteSummary>,
}

/// Runs the federated Newton iteration in process: every site computes its contribution on its own
/// rows, the coordinator only sees the sums. Every site must have the same design columns.
pub fn fit_federated(
    sites: &[SiteRows],
    options: FitOptions,
    min_rows_per_site: u64,
) -> Result<FederatedFit, LogisticError> {
    let first = sites.first().ok_or(LogisticError::NoSites)?;
    let names = first.design.column_names().to_vec();
    for site in sites {
        if site.design.column_names() != names {
            return Err(LogisticError::Site {
                site: site.site.clone(),
                source: Box::new(LogisticError::MalformedContribution {
                    problem: "design columns differ from the other sites'".into(),
                }),
            });
        }
    }
    let mut coordinator = NewtonCoordinator::new(names, options);
    let mut summaries = Vec::new();
    loop {
        let contributions = sites
            .iter()
            .map(|site| {
                site_contribution(&site.design, &site.outcome, coordinator.beta(), min_rows_per_site).map_err(
                    |source| LogisticError::Site {
                        site: site.site.clone(),
                        source: Box::new(source),
                    },
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        if summaries.is_empty() {
            summaries = sites
                .iter()
                .zip(&contributions)
                .map(|(site, c)| SiteSummary {
                    site: site.site.clone(),
                    n: c.n,
                    n_positive: c.n_positive,
                    outcome_rate: c.n_positive as f64 / c.n as f64,
                })
                .collect();
        }
        if let NewtonStep::Finished(pooled) = coordinator.update(&contributions)? {
            return Ok(FederatedFit {
                pooled: *pooled,
                sites: summaries,
            });
        }
    }
}

/// Fits on one table of rows: the federated fit with a single site and no disclosure threshold.
pub fn fit(
    design: &DesignMatrix,
    outcome: &[bool],
    options: FitOptions,
) -> Result<LogisticFit, LogisticError> {
    let site = SiteRows {
        site: "local".into(),
        design: design.clone(),
        outcome: outcome.to_vec(),
    };
    fit_federated(std::slice::from_ref(&site), options, 0)
        .map(|fit| fit.pooled)
        .map_err(|error| match error {
            LogisticError::Site { source, .. } => *source,
            other => other,
        })
}

/// One row's fitted quantities, computed without cancellation or log(0) for any η.
struct RowFit {
    /// y − μ
    residual: f64,
    /// μ(1 − μ)
    weight: f64,
    /// y log μ + (1 − y) log(1 − μ)
    loglik: f64,
}

impl RowFit {
    fn new(eta: f64, y: bool) -> Self {
        // e = exp(−|η|) ≤ 1; μ and 1 − μ are both formed as quotients, never as 1 − something.
        let e = (-eta.abs()).exp();
        let (mu, one_minus_mu) = if eta >= 0.0 {
            (1.0 / (1.0 + e), e / (1.0 + e))
        } else {
            (e / (1.0 + e), 1.0 / (1.0 + e))
        };
        // log(1 + exp(−|η|)) is the log-loss of the likelier outcome; the other adds |η|.
        let soft = e.ln_1p();
        let likely = (eta >= 0.0) == y;
        let loglik = if likely { -soft } else { -soft - eta.abs() };
        let residual = if y { one_minus_mu } else { -mu };
        Self {
            residual,
            weight: mu * one_minus_mu,
            loglik,
        }
    }
}

/// Δβ = I⁻¹ g by Cholesky; `None` when the information is not numerically positive definite or the
/// step is not finite.
fn newton_step(pooled: &SiteContribution) -> Option<Vec<f64>> {
    let p = pooled.gradient.len();
    let information = DMatrix::from_row_slice(p, p, &pooled.information);
    let step = information
        .cholesky()?
        .solve(&DVector::from_column_slice(&pooled.gradient));
    step.iter()
        .all(|d| d.is_finite())
        .then(|| step.iter().copied().collect())
}

fn max_abs(values: &[f64]) -> f64 {
    values.iter().fold(0.0, |m, v| m.max(v.abs()))
}

/// Checks that the pooled information at β = 0 (XᵀX/4) is of full rank; names each column that is zero
/// or a linear combination of earlier columns, and those it combines.
fn check_rank(names: &[String], information: &[f64], n: u64) -> Result<(), LogisticError> {
    let p = names.len();
    let diagonal: Vec<f64> = (0..p).map(|j| information[j * p + j]).collect();
    let mut independent: Vec<usize> = Vec::new();
    let mut dependent_terms = Vec::new();
    let mut details = Vec::new();
    for k in 0..p {
        if diagonal[k] <= 0.0 {
            dependent_terms.push(names[k].clone());
            details.push(format!("'{}' is zero in all {n} rows", names[k]));
            continue;
        }
        // Correlation-scaled information restricted to the accepted columns plus k.
        let scaled = |a: usize, b: usize| information[a * p + b] / (diagonal[a] * diagonal[b]).sqrt();
        let m = independent.len();
        let residual_and_coefficients = if m == 0 {
            Some((1.0, DVector::zeros(0)))
        } else {
            let a = DMatrix::from_fn(m, m, |r, c| scaled(independent[r], independent[c]));
            let b = DVector::from_fn(m, |r, _| scaled(independent[r], k));
            a.cholesky().map(|chol| {
                let coefficients = chol.solve(&b);
                (1.0 - b.dot(&coefficients), coefficients)
            })
        };
        match residual_and_coefficients {
            Some((residual, _)) if residual > RANK_TOLERANCE => independent.push(k),
            Some((_, coefficients)) => {
                let partners: Vec<&str> = independent
                    .iter()
                    .zip(coefficients.iter())
                    .filter(|(_, c)| c.abs() > 1e-6)
                    .map(|(&j, _)| names[j].as_str())
                    .collect();
                dependent_terms.push(names[k].clone());
                details.push(if partners == [super::design::INTERCEPT] {
                    format!("'{}' is constant", names[k])
                } else {
                    format!(
                        "'{}' is a linear combination of {}",
                        names[k],
                        partners.join(", ")
                    )
                });
            }
            // The accepted columns were checked one by one; a failure here is numerical: report k.
            None => {
                dependent_terms.push(names[k].clone());
                details.push(format!(
                    "'{}' is numerically collinear with earlier terms",
                    names[k]
                ));
            }
        }
    }
    if dependent_terms.is_empty() {
        Ok(())
    } else {
        Err(LogisticError::RankDeficient {
            terms: dependent_terms,
            details: details.join("; "),
        })
    }
}

#[cfg(test)]
mod tests;
