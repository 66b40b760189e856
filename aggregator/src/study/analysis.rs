//! The study's analyses of clinical factors, after the last round (`[[analysis]]` of
//! `aggregator.toml`): each is a federated Newton–Raphson fit ([`AnalysisRun`]) whose every step is
//! one exchange with the sites. At step 0 a site joins with its size or refuses; every later step is
//! a Newton step whose sums reach the aggregator only through a secure sum between the participants
//! (a ring instance of the rounds' protocol, [`SecureSum`]; a site's answer carries its masked
//! input). One analysis runs at a time, in configuration order; each result is stored in the state
//! folder as it ends, and one already stored for the same configuration is not run again after a
//! restart. A step waits for every participant until `rounds.validation_deadline_s`: a site that
//! has not answered step 0 by then is left out (and named); one that stops answering later, refuses,
//! or whose sums are not in the step's secure sum is left out and the analysis starts again without
//! it.

use super::{Phase, Study, to_status};
use crate::secure::{Attempt, SecureSum, SumLayout};
use fedlnm_protocol::{SecAggStage, Status};
use fedlnm_shared::analysis::{
    AnalysisAnswer, AnalysisConfig, AnalysisRequest, AnalysisResult, AnalysisRun, Progress, RingSum,
    RunError, SecureStep, SiteExclusion, ring,
};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

pub(super) struct Analysing {
    /// Its position in `[[analysis]]`.
    index: usize,
    run: AnalysisRun,
    request: AnalysisRequest,
    /// The secure sum of the current Newton step (none at step 0) and its attempt number.
    sum: Option<(SecureSum, u64)>,
    answers: BTreeMap<String, AnalysisAnswer>,
    deadline: Instant,
}

impl Analysing {
    /// Which analysis runs and at which step, in words.
    pub(super) fn describe(&self) -> String {
        format!(
            "analysis {} ('{}'): exchange {}",
            self.index + 1,
            self.run.config().name,
            self.run.step()
        )
    }

    /// The secure sum of the current step, if `round` is its own, with its attempt.
    pub(super) fn sum_of(&mut self, round: u64) -> Option<(&mut SecureSum, u64)> {
        self.sum
            .as_mut()
            .filter(|(sum, _)| sum.config().round == round)
            .map(|(sum, at)| (sum, *at))
    }

    /// As [`Self::sum_of`], read-only, for `attempt`.
    pub(super) fn sum_ref(&self, round: u64, attempt: u64) -> Option<&SecureSum> {
        self.sum
            .as_ref()
            .filter(|(sum, at)| sum.config().round == round && *at == attempt)
            .map(|(sum, _)| sum)
    }

    /// `site`'s node restarted: its secrets of the step's sum are gone.
    pub(super) fn forget(&mut self, site: &str) -> bool {
        self.sum.as_mut().is_some_and(|(sum, _)| sum.forget(site))
    }
}

impl Study {
    /// The first configured analysis from position `from` without a stored result for its
    /// configuration, or the end of the study.
    pub(super) fn start_analyses(&mut self, from: usize, now: Instant) {
        let config = self.config.clone();
        for (index, config) in config.analyses.iter().enumerate().skip(from) {
            match self.store.analysis(&config.name) {
                Ok(Some(stored)) if stored.analysis == *config => continue,
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%error, "the stored result is unreadable; the analysis runs again")
                }
            }
            let sites = self.config.sites.iter().map(|s| s.id.clone()).collect();
            if self.start_analysis(index, config.clone(), sites, Vec::new(), now) {
                return;
            }
        }
        tracing::info!(rounds = self.committed.record.round, "study finished");
        self.telemetry.round.set(0);
        self.telemetry.study_finished.set(1);
        self.phase = Phase::Finished;
    }

    fn start_analysis(
        &mut self,
        index: usize,
        config: AnalysisConfig,
        sites: Vec<String>,
        excluded: Vec<SiteExclusion>,
        now: Instant,
    ) -> bool {
        let name = config.name.clone();
        let min_sites = crate::statistics::min_pool_sites(&self.config);
        match AnalysisRun::new(config, sites, excluded, min_sites) {
            Ok(run) => {
                tracing::info!(
                    analysis = name,
                    sites = run.participants().len(),
                    "analysis started"
                );
                self.phase = Phase::Analysing(Box::new(Analysing {
                    index,
                    request: run.request(),
                    run,
                    sum: None,
                    answers: BTreeMap::new(),
                    deadline: self.analysis_deadline(now),
                }));
                true
            }
            // Checked at load: a bug if it happens.
            Err((key, problem)) => {
                tracing::error!(analysis = name, key, problem, "the analysis cannot run");
                false
            }
        }
    }

    /// How long after its deadline a Newton step's secure sum may still finish: one stage timeout
    /// for each stage after the masked inputs (consistency check, signatures, unmasking) and one
    /// spare; then the step ends without it.
    fn analysis_grace(&self) -> Duration {
        Duration::from_secs(4 * self.config.rounds.stage_timeout_s)
    }

    fn analysis_deadline(&self, now: Instant) -> Instant {
        now + Duration::from_secs(self.config.rounds.validation_deadline_s)
    }

    /// The step `site` should answer now, if any: `Err` with the reason to wait otherwise.
    pub(super) fn analysis_task_for(analysing: &Analysing, site: &str) -> Result<AnalysisRequest, String> {
        let name = &analysing.request.analysis.name;
        let step = analysing.request.step;
        if !analysing.run.participants().iter().any(|p| p == site) {
            return Err(format!("analysis {name} runs without this site"));
        }
        if analysing.answers.contains_key(site) {
            return Err(format!(
                "answer to step {step} of analysis {name} received; waiting for the others"
            ));
        }
        Ok(analysing.request.clone())
    }

    /// A site's answer to a step of the running analysis (at a Newton step, with its masked input
    /// for the step's secure sum).
    ///
    /// # Errors
    /// No analysis of that name is running, the step is not the current one, the site is not asked,
    /// it already answered, or its answer is not of the step's kind (a size at step 0, masked sums
    /// later) or its masked input is refused by the sum.
    pub fn accept_analysis_answer(
        &mut self,
        site: &str,
        analysis: &str,
        step: u32,
        answer: AnalysisAnswer,
    ) -> Result<(), Status> {
        let Phase::Analysing(analysing) = &mut self.phase else {
            return Err(Status::failed_precondition(format!(
                "no analysis is running (answer to step {step} of analysis {analysis})"
            )));
        };
        let current = (&analysing.request.analysis.name, analysing.request.step);
        if current != (&analysis.to_owned(), step) {
            return Err(Status::failed_precondition(format!(
                "step {step} of analysis {analysis} is not open: the study is at step {} of analysis {}",
                current.1, current.0
            )));
        }
        if !analysing.run.participants().iter().any(|p| p == site) {
            return Err(Status::failed_precondition(format!(
                "analysis {analysis} runs without site {site}"
            )));
        }
        if analysing.answers.contains_key(site) {
            return Err(Status::already_exists(format!(
                "site {site} already answered step {step} of analysis {analysis}"
            )));
        }
        match (&answer, &mut analysing.sum) {
            (AnalysisAnswer::Refused { reason }, sum) => {
                tracing::warn!(site, analysis, step, reason, "the site refused the analysis");
                if let Some((sum, _)) = sum {
                    sum.leave(site);
                }
            }
            (AnalysisAnswer::Joined { .. }, None) => {}
            (AnalysisAnswer::Masked { input, .. }, Some((sum, _))) => {
                sum.accept_masked(site, input).map_err(to_status)?;
            }
            (AnalysisAnswer::Joined { .. }, Some(_)) | (AnalysisAnswer::Masked { .. }, None) => {
                return Err(Status::invalid_argument(format!(
                    "step {step} of analysis {analysis} takes {}",
                    if step == 0 {
                        "the site's size, not masked sums"
                    } else {
                        "masked sums"
                    }
                )));
            }
        }
        analysing.answers.insert(site.to_owned(), answer);
        Ok(())
    }

    /// Moves the running analysis on when its step is complete (every participant answered at step
    /// 0; the secure sum unmasked or failed, or a participant refused, later) or past its deadline;
    /// returns whether anything changed.
    pub(super) fn tick_analysis(&mut self, now: Instant) -> bool {
        let hard_stop = self.analysis_grace();
        let Phase::Analysing(analysing) = &mut self.phase else {
            return false;
        };
        let participants = analysing.run.participants().to_vec();
        let all_in = participants
            .iter()
            .all(|site| analysing.answers.contains_key(site));
        let refused = analysing
            .answers
            .values()
            .any(|answer| matches!(answer, AnalysisAnswer::Refused { .. }));
        let outcome = match &mut analysing.sum {
            None => {
                if !all_in && now < analysing.deadline {
                    return false;
                }
                // Silence at step 0 is a refusal by default: the analysis goes on without those sites.
                let seconds = self.config.rounds.validation_deadline_s;
                for site in &participants {
                    analysing
                        .answers
                        .entry(site.clone())
                        .or_insert_with(|| AnalysisAnswer::Refused {
                            reason: format!("no answer within {seconds} s (rounds.validation_deadline_s)"),
                        });
                }
                let answers = std::mem::take(&mut analysing.answers);
                analysing.run.update(&answers, None)
            }
            Some(_) if refused => {
                let answers = std::mem::take(&mut analysing.answers);
                analysing.run.update(&answers, None)
            }
            Some((sum, _)) => {
                let changed = sum.advance(now);
                let outcome = match sum.outcome() {
                    Some(outcome) => outcome.clone(),
                    None if now >= analysing.deadline + hard_stop => {
                        Err("the secure sum did not finish in time".to_owned())
                    }
                    None => return changed,
                };
                let answers = std::mem::take(&mut analysing.answers);
                match outcome {
                    Ok((sites, sums)) => analysing.run.update(&answers, Some(&RingSum { sites, sums })),
                    Err(reason) => match participants.iter().find(|site| !answers.contains_key(*site)) {
                        Some(site) => Err(RunError {
                            site: site.clone(),
                            reason: format!("no masked sums before the secure sum closed ({reason})"),
                        }),
                        None => {
                            let step = analysing.run.step();
                            Ok(Progress::Done(Box::new(analysing.run.fail(&format!(
                                "the secure sum of step {step} failed: {reason}"
                            )))))
                        }
                    },
                }
            }
        };
        match outcome {
            Ok(Progress::Continue(request)) => self.next_analysis_step(request, now),
            Ok(Progress::Done(result)) => self.finish_analysis(&result, now),
            Err(error) => self.restart_analysis_without(error, now),
        }
        true
    }

    /// Opens the Newton step of `request`: its secure sum between the participants.
    fn next_analysis_step(&mut self, mut request: AnalysisRequest, now: Instant) {
        self.attempts += 1;
        let attempt = Attempt {
            round: self.committed.record.round,
            attempt: self.attempts,
            instance: self.instance,
            opened: now,
            deadline: self.analysis_deadline(now),
        };
        let digest = self.committed.model.digest.clone();
        let (config, authority) = (self.config.clone(), self.authority.clone());
        let Phase::Analysing(analysing) = &mut self.phase else {
            return;
        };
        let sum = ring::tensor_specs(&request.analysis, &request.fits).and_then(|tensors| {
            let layout = SumLayout {
                tensors,
                input: ring::INPUT,
                max_site_total: 1,
            };
            SecureSum::new(
                &config,
                &attempt,
                &digest,
                analysing.run.participants(),
                layout,
                authority,
            )
            .map_err(|error| error.to_string())
        });
        match sum {
            Ok(sum) => {
                request.sum = Some(Box::new(SecureStep {
                    config: sum.config().clone(),
                    ids: sum.ids().clone(),
                    rows: analysing.run.rows(),
                }));
                analysing.request = request;
                analysing.sum = Some((sum, attempt.attempt));
                analysing.deadline = attempt.deadline;
            }
            Err(reason) => {
                let result = analysing
                    .run
                    .fail(&format!("cannot configure the secure sum: {reason}"));
                self.finish_analysis(&result, now);
            }
        }
    }

    /// Stores a finished analysis and starts the next one.
    fn finish_analysis(&mut self, result: &AnalysisResult, now: Instant) {
        match self.store.write_analysis(result) {
            Ok(path) => tracing::info!(
                analysis = result.analysis.name,
                steps = result.steps,
                sites = result.sites.len(),
                path = %path.display(),
                "analysis stored"
            ),
            // The result is recomputed at the next start (the sites still hold their rows).
            Err(error) => {
                tracing::error!(%error, "cannot store the analysis result; it runs again at the next start")
            }
        }
        let Phase::Analysing(analysing) = &self.phase else {
            return;
        };
        let next = analysing.index + 1;
        self.start_analyses(next, now);
    }

    /// Starts the running analysis again without the site of `error`.
    fn restart_analysis_without(&mut self, error: RunError, now: Instant) {
        let Phase::Analysing(analysing) = &self.phase else {
            return;
        };
        tracing::warn!(
            analysis = analysing.request.analysis.name,
            site = error.site,
            reason = error.reason,
            "the analysis starts again without the site"
        );
        let config = analysing.run.config().clone();
        let sites = analysing
            .run
            .participants()
            .iter()
            .filter(|s| **s != error.site)
            .cloned()
            .collect();
        let mut excluded = analysing.run.excluded().to_vec();
        excluded.push(SiteExclusion {
            site: error.site,
            reason: error.reason,
        });
        let index = analysing.index;
        if !self.start_analysis(index, config, sites, excluded, now) {
            self.start_analyses(index + 1, now);
        }
    }

    /// When the running analysis's step may move on time alone.
    pub(super) fn analysis_deadline_of(&self, analysing: &Analysing) -> Instant {
        let hard_stop = analysing.deadline + self.analysis_grace();
        analysing
            .sum
            .as_ref()
            .and_then(|(sum, _)| sum.next_deadline())
            .into_iter()
            .chain([analysing.deadline, hard_stop])
            .filter(|&at| at > Instant::now())
            .min()
            .unwrap_or(analysing.deadline)
    }

    /// A secure-aggregation message of the running analysis's step; returns the sum's attempt.
    pub(super) fn accept_analysis_message(
        analysing: &mut Analysing,
        site: &str,
        round: u64,
        stage: SecAggStage,
        payload: &[u8],
    ) -> Result<u64, Status> {
        let (sum, attempt) = analysing.sum_of(round).ok_or_else(|| {
            Status::failed_precondition(format!(
                "no secure sum of an analysis step is open for round {round}"
            ))
        })?;
        sum.accept_message(site, stage, payload).map_err(to_status)?;
        Ok(attempt)
    }
}
