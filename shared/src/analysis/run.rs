//! The coordinator's side of an analysis: the sites join at step 0 (their sizes, or their refusals);
//! then every fit's Newton iteration runs over the secure sums of the participants' contributions,
//! one sum per step. Pure: the aggregator carries the requests and answers and runs the secure sums.

use super::{AnalysisAnswer, AnalysisConfig, AnalysisRequest, FitRequest, ring};
use crate::stats::logistic::{FitOptions, LogisticFit, NewtonCoordinator, NewtonStep};
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

/// The unmasked secure sum of one Newton step: the sites in it and one ring vector per fit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingSum {
    pub sites: Vec<String>,
    pub sums: Vec<Vec<u64>>,
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
    outcome: Option<FitOutcome>,
}

/// One run of an analysis over a fixed set of participants.
pub struct AnalysisRun {
    config: AnalysisConfig,
    /// The fewest participants a Newton step's secure sum may have.
    min_sites: usize,
    participants: Vec<String>,
    excluded: Vec<SiteExclusion>,
    step: u32,
    fits: Vec<Fit>,
    rates: Vec<SiteRate>,
}

impl AnalysisRun {
    /// A run of `config` asking `sites` (those of `excluded` are already out, with their reasons)
    /// that fits only if at least `min_sites` (at least 2) join: the sums of fewer would be one
    /// site's own.
    ///
    /// # Errors
    /// A configuration that [`AnalysisConfig::check`] refuses (`Err` names the key and problem).
    pub fn new(
        config: AnalysisConfig,
        sites: Vec<String>,
        excluded: Vec<SiteExclusion>,
        min_sites: usize,
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
                    coordinator: NewtonCoordinator::new(names, options),
                    outcome: None,
                })
            })
            .collect::<Result<_, (&'static str, String)>>()?;
        Ok(Self {
            config,
            min_sites: min_sites.max(2),
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

    /// The participants' labelled rows in all (0 before step 0 closes).
    #[must_use]
    pub fn rows(&self) -> u64 {
        self.rates.iter().map(|rate| rate.n).sum()
    }

    /// The request of the current step: every fit still running, at its β; its secure sum (after
    /// step 0) is the aggregator's to add.
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
            sum: None,
        }
    }

    /// Ends the run: every fit still running fails with `reason` (for example a secure sum that no
    /// participant can be blamed for).
    pub fn fail(&mut self, reason: &str) -> AnalysisResult {
        for fit in &mut self.fits {
            fit.outcome.get_or_insert_with(|| FitOutcome {
                terms: fit.terms.clone(),
                fit: None,
                error: Some(reason.to_owned()),
            });
        }
        self.result()
    }

    /// Takes every participant's answer to the current step and, after step 0, the step's unmasked
    /// secure sum, and moves every running fit on.
    ///
    /// At step 0 a site joins with its size or refuses (and is excluded, with its reason); fewer
    /// than the run's least number of sites end it, every fit failing with the reason. Later, a
    /// refusal, a missing answer, a size other than at step 0, or a site absent from the sum is a
    /// [`RunError`] naming the site: start again without it. A sum that does not decode ends the run.
    ///
    /// # Errors
    /// See above.
    pub fn update(
        &mut self,
        answers: &BTreeMap<String, AnalysisAnswer>,
        sum: Option<&RingSum>,
    ) -> Result<Progress, RunError> {
        let step = self.step;
        if step == 0 {
            return Ok(self.join(answers));
        }
        for site in &self.participants {
            let error = |reason: String| RunError {
                site: site.clone(),
                reason,
            };
            let rate = self.rates.iter().find(|rate| rate.site == *site);
            match answers.get(site) {
                None => return Err(error(format!("no answer to step {step}"))),
                Some(AnalysisAnswer::Refused { reason }) => {
                    return Err(error(format!("refused step {step} after taking part: {reason}")));
                }
                Some(AnalysisAnswer::Joined { .. }) => {
                    return Err(error(format!("answered step {step} without its masked sums")));
                }
                Some(AnalysisAnswer::Masked { n, events, .. }) => {
                    if let Some(rate) = rate.filter(|rate| (rate.n, rate.events) != (*n, *events)) {
                        return Err(error(format!(
                            "{n} patients ({events} events) at step {step}, {} ({}) at step 0",
                            rate.n, rate.events
                        )));
                    }
                }
            }
        }
        let Some(sum) = sum else {
            return Ok(Progress::Done(Box::new(
                self.fail(&format!("step {step} has no secure sum")),
            )));
        };
        if let Some(missing) = self.participants.iter().find(|site| !sum.sites.contains(site)) {
            return Err(RunError {
                site: missing.clone(),
                reason: format!("its sums are not in the secure sum of step {step}"),
            });
        }
        let request = self.request();
        let pooled = match ring::decode(&self.config, &request.fits, self.rows(), &sum.sums) {
            Ok(pooled) => pooled,
            Err(problem) => {
                return Ok(Progress::Done(Box::new(self.fail(&format!(
                    "the secure sum of step {step} does not decode: {problem}"
                )))));
            }
        };
        let running: Vec<usize> = (0..self.fits.len())
            .filter(|&i| self.fits[i].outcome.is_none())
            .collect();
        for (&index, contribution) in running.iter().zip(&pooled) {
            let fit = &mut self.fits[index];
            let finished = match fit.coordinator.update(std::slice::from_ref(contribution)) {
                Ok(NewtonStep::Continue(_)) => None,
                Ok(NewtonStep::Finished(result)) => Some(Ok(*result)),
                Err(error) => Some(Err(error.to_string())),
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

    /// Step 0: who joins, with which size; the fits start if enough sites joined.
    fn join(&mut self, answers: &BTreeMap<String, AnalysisAnswer>) -> Progress {
        let mut included = Vec::new();
        for site in &self.participants {
            let reason = match answers.get(site) {
                Some(AnalysisAnswer::Joined { n, events }) if events <= n => {
                    self.rates.push(SiteRate::new(site, *n, *events));
                    included.push(site.clone());
                    continue;
                }
                Some(AnalysisAnswer::Refused { reason }) => reason.clone(),
                Some(AnalysisAnswer::Joined { n, events }) => format!("{events} events among {n} patients"),
                Some(AnalysisAnswer::Masked { .. }) => "masked sums at step 0, before any Newton step".into(),
                None => "no answer to step 0".into(),
            };
            self.excluded.push(SiteExclusion {
                site: site.clone(),
                reason,
            });
        }
        self.participants = included;
        self.step = 1;
        if self.participants.len() < self.min_sites {
            let reason = format!(
                "{} site(s) took part; the analysis needs at least {} so that the aggregator sees its \
                 sums only added over sites (rounds.min_sites, at least 2)",
                self.participants.len(),
                self.min_sites
            );
            return Progress::Done(Box::new(self.fail(&reason)));
        }
        Progress::Continue(self.request())
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
