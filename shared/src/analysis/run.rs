//! The coordinator's side of an analysis: every fit's Newton iteration over the sums of the sites'
//! contributions, step by step, with the sites' sizes and refusals. Pure: the aggregator carries the
//! requests and answers.

use super::{AnalysisAnswer, AnalysisConfig, AnalysisRequest, FitRequest};
use crate::stats::logistic::{FitOptions, LogisticFit, NewtonCoordinator, NewtonStep, SiteContribution};
use crate::stats::wilson_interval;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A site's size and outcome rate, with the Wilson 95% interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiteRate {
    pub site: String,
    pub n: u64,
    pub events: u64,
    pub rate: f64,
    pub ci_lower: f64,
    pub ci_upper: f64,
}

impl SiteRate {
    fn new(site: &str, n: u64, events: u64) -> Self {
        let (ci_lower, ci_upper) = wilson_interval(events, n).unwrap_or((0.0, 1.0));
        Self {
            site: site.to_owned(),
            n,
            events,
            rate: if n == 0 {
                f64::NAN
            } else {
                events as f64 / n as f64
            },
            ci_lower,
            ci_upper,
        }
    }
}

/// A site that is not in the analysis, and why (its own refusal, or what the coordinator found).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteExclusion {
    pub site: String,
    pub reason: String,
}

/// One fit's end: the fit (status ok, separation or not converged) or why there is none (for
/// example a design that the pooled rows cannot identify).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FitOutcome {
    pub terms: Vec<String>,
    pub fit: Option<LogisticFit>,
    pub error: Option<String>,
}

/// What an analysis found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnalysisResult {
    pub analysis: AnalysisConfig,
    /// The sites whose rows are in the fits.
    pub sites: Vec<SiteRate>,
    /// Their pooled size and rate (site `pooled`); `None` when no site took part.
    pub pooled: Option<SiteRate>,
    pub excluded: Vec<SiteExclusion>,
    /// The model of every term.
    pub adjusted: FitOutcome,
    /// One model per term, in the order of the analysis's terms.
    pub crude: Vec<FitOutcome>,
    /// Exchanges with the sites (steps) the fits took.
    pub steps: u32,
}

/// What the coordinator needs next.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// Send this request to every participant.
    Continue(AnalysisRequest),
    Done(Box<AnalysisResult>),
}

/// A participant's answer that the coordinator cannot use: the analysis starts again without it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("site {site}: {reason}")]
pub struct RunError {
    pub site: String,
    pub reason: String,
}

struct Fit {
    terms: Vec<String>,
    coordinator: NewtonCoordinator,
    width: usize,
    outcome: Option<FitOutcome>,
}

/// One run of an analysis over a fixed set of participants.
pub struct AnalysisRun {
    config: AnalysisConfig,
    participants: Vec<String>,
    excluded: Vec<SiteExclusion>,
    step: u32,
    fits: Vec<Fit>,
    rates: Vec<SiteRate>,
}

impl AnalysisRun {
    /// A run of `config` asking `sites` (those of `excluded` are already out, with their reasons).
    ///
    /// # Errors
    /// A configuration that [`AnalysisConfig::check`] refuses (`Err` names the key and problem).
    pub fn new(
        config: AnalysisConfig,
        sites: Vec<String>,
        excluded: Vec<SiteExclusion>,
    ) -> Result<Self, (&'static str, String)> {
        config.check()?;
        let options = FitOptions {
            max_iterations: config.max_iterations as usize,
            ..FitOptions::default()
        };
        let fits = config
            .fits()
            .into_iter()
            .map(|terms| {
                let names = config
                    .design_spec(&terms)
                    .map_err(|e| ("terms", e.to_string()))?
                    .column_names()
                    .to_vec();
                Ok(Fit {
                    terms,
                    width: names.len(),
                    coordinator: NewtonCoordinator::new(names, options),
                    outcome: None,
                })
            })
            .collect::<Result<_, (&'static str, String)>>()?;
        Ok(Self {
            config,
            participants: sites,
            excluded,
            step: 0,
            fits,
            rates: Vec::new(),
        })
    }

    /// The sites whose answer the current step waits for.
    #[must_use]
    pub fn participants(&self) -> &[String] {
        &self.participants
    }

    /// The sites excluded so far, with their reasons.
    #[must_use]
    pub fn excluded(&self) -> &[SiteExclusion] {
        &self.excluded
    }

    #[must_use]
    pub fn config(&self) -> &AnalysisConfig {
        &self.config
    }

    /// The current step (0-based).
    #[must_use]
    pub fn step(&self) -> u32 {
        self.step
    }

    /// The request of the current step: every fit still running, at its β.
    #[must_use]
    pub fn request(&self) -> AnalysisRequest {
        AnalysisRequest {
            analysis: self.config.clone(),
            step: self.step,
            fits: self
                .fits
                .iter()
                .filter(|fit| fit.outcome.is_none())
                .map(|fit| FitRequest {
                    terms: fit.terms.clone(),
                    beta: fit.coordinator.beta().to_vec(),
                })
                .collect(),
        }
    }

    /// Takes every participant's answer to the current step and moves every running fit on.
    ///
    /// At step 0 a refusal excludes its site (with the site's reason); later, a refusal, a missing
    /// answer or a malformed one is a [`RunError`] naming the site: start again without it.
    ///
    /// # Errors
    /// See above.
    pub fn update(&mut self, answers: &BTreeMap<String, AnalysisAnswer>) -> Result<Progress, RunError> {
        let running: Vec<usize> = (0..self.fits.len())
            .filter(|&i| self.fits[i].outcome.is_none())
            .collect();
        let mut per_fit: Vec<Vec<SiteContribution>> = vec![Vec::new(); running.len()];
        let mut included = Vec::new();
        for site in &self.participants {
            let error = |reason: String| RunError {
                site: site.clone(),
                reason,
            };
            let contributions = match answers.get(site) {
                None => return Err(error(format!("no answer to step {}", self.step))),
                Some(AnalysisAnswer::Refused { reason }) if self.step == 0 => {
                    self.excluded.push(SiteExclusion {
                        site: site.clone(),
                        reason: reason.clone(),
                    });
                    continue;
                }
                Some(AnalysisAnswer::Refused { reason }) => {
                    return Err(error(format!(
                        "refused step {} after taking part: {reason}",
                        self.step
                    )));
                }
                Some(AnalysisAnswer::Contributions(contributions)) => contributions,
            };
            self.check(site, contributions, &running).map_err(error)?;
            for (slot, contribution) in per_fit.iter_mut().zip(contributions) {
                slot.push(contribution.clone());
            }
            included.push(site.clone());
        }
        if self.step == 0 {
            self.participants = included;
            self.rates = self
                .participants
                .iter()
                .zip(per_fit.first().into_iter().flatten())
                .map(|(site, c)| SiteRate::new(site, c.n, c.n_positive))
                .collect();
        }
        for (&index, contributions) in running.iter().zip(&per_fit) {
            let fit = &mut self.fits[index];
            let finished = if contributions.is_empty() {
                Some(Err("no site took part".to_owned()))
            } else {
                match fit.coordinator.update(contributions) {
                    Ok(NewtonStep::Continue(_)) => None,
                    Ok(NewtonStep::Finished(result)) => Some(Ok(*result)),
                    Err(error) => Some(Err(error.to_string())),
                }
            };
            if let Some(result) = finished {
                let (fit_result, error) = match result {
                    Ok(result) => (Some(result), None),
                    Err(error) => (None, Some(error)),
                };
                fit.outcome = Some(FitOutcome {
                    terms: fit.terms.clone(),
                    fit: fit_result,
                    error,
                });
            }
        }
        self.step += 1;
        if self.fits.iter().all(|fit| fit.outcome.is_some()) {
            return Ok(Progress::Done(Box::new(self.result())));
        }
        Ok(Progress::Continue(self.request()))
    }

    /// A participant's contributions: one per running fit, of the fit's width, finite, with
    /// consistent counts and, after step 0, the same size as at step 0.
    fn check(&self, site: &str, contributions: &[SiteContribution], running: &[usize]) -> Result<(), String> {
        if contributions.len() != running.len() {
            return Err(format!(
                "{} contributions for the {} fits of step {}",
                contributions.len(),
                running.len(),
                self.step
            ));
        }
        let first = contributions.first();
        for (contribution, &index) in contributions.iter().zip(running) {
            let p = self.fits[index].width;
            if contribution.gradient.len() != p || contribution.information.len() != p * p {
                return Err(format!(
                    "a contribution of {} score and {} information entries for a model of {p} columns",
                    contribution.gradient.len(),
                    contribution.information.len()
                ));
            }
            let values = contribution.gradient.iter().chain(&contribution.information);
            if values.chain([&contribution.loglik]).any(|v| !v.is_finite()) {
                return Err("a contribution holds a non-finite number".into());
            }
            if contribution.n_positive > contribution.n
                || first.is_some_and(|f| (f.n, f.n_positive) != (contribution.n, contribution.n_positive))
            {
                return Err("the fits of one step disagree on the site's size".into());
            }
        }
        let at_step0 = self.rates.iter().find(|rate| rate.site == site);
        if let (Some(first), Some(rate)) = (first, at_step0)
            && (first.n, first.n_positive) != (rate.n, rate.events)
        {
            return Err(format!(
                "{} patients ({} events) at step {}, {} ({}) at step 0",
                first.n, first.n_positive, self.step, rate.n, rate.events
            ));
        }
        Ok(())
    }

    fn result(&self) -> AnalysisResult {
        let outcome = |fit: &Fit| {
            fit.outcome.clone().unwrap_or_else(|| FitOutcome {
                terms: fit.terms.clone(),
                fit: None,
                error: Some("not finished".into()),
            })
        };
        let (n, events) = self
            .rates
            .iter()
            .fold((0, 0), |(n, e), rate| (n + rate.n, e + rate.events));
        AnalysisResult {
            analysis: self.config.clone(),
            sites: self.rates.clone(),
            pooled: (!self.rates.is_empty()).then(|| SiteRate::new("pooled", n, events)),
            excluded: self.excluded.clone(),
            adjusted: outcome(&self.fits[0]),
            crude: self.fits[1..].iter().map(outcome).collect(),
            steps: self.step,
        }
    }
}
