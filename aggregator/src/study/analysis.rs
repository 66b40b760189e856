//! The study's analyses of clinical factors, after the last round (`[[analysis]]` of
//! `aggregator.toml`): each is a federated Newton–Raphson fit ([`AnalysisRun`]) whose every step is
//! one exchange with the sites (a task, then the site's answer: the sums of its own rows, or its
//! refusal). One analysis runs at a time, in configuration order; each result is stored in the state
//! folder as it ends, and one already stored for the same configuration is not run again after a
//! restart. A step waits for every participant until `rounds.validation_deadline_s`: a site that
//! has not answered step 0 by then is left out (and named); one that stops answering later, or
//! answers what the coordinator cannot use, is left out and the analysis starts again without it.

use super::{Phase, Study};
use fedlnm_protocol::Status;
use fedlnm_shared::analysis::{
    AnalysisAnswer, AnalysisConfig, AnalysisRequest, AnalysisRun, Progress, SiteExclusion,
};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

pub(super) struct Analysing {
    /// Its position in `[[analysis]]`.
    index: usize,
    run: AnalysisRun,
    request: AnalysisRequest,
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
        match AnalysisRun::new(config, sites, excluded) {
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

    /// A site's answer to a step of the running analysis.
    ///
    /// # Errors
    /// No analysis of that name is running, the step is not the current one, the site is not asked,
    /// or it already answered.
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
        if let AnalysisAnswer::Refused { reason } = &answer {
            tracing::warn!(site, analysis, step, reason, "the site refused the analysis");
        }
        analysing.answers.insert(site.to_owned(), answer);
        Ok(())
    }

    /// Moves the running analysis on when every participant answered or the step's deadline passed;
    /// returns whether anything changed.
    pub(super) fn tick_analysis(&mut self, now: Instant) -> bool {
        let Phase::Analysing(analysing) = &mut self.phase else {
            return false;
        };
        let all_in = analysing
            .run
            .participants()
            .iter()
            .all(|site| analysing.answers.contains_key(site));
        if !all_in && now < analysing.deadline {
            return false;
        }
        if !all_in && analysing.run.step() == 0 {
            // Silence at step 0 is a refusal by default: the analysis goes on without those sites.
            let seconds = self.config.rounds.validation_deadline_s;
            for site in analysing.run.participants() {
                analysing
                    .answers
                    .entry(site.clone())
                    .or_insert_with(|| AnalysisAnswer::Refused {
                        reason: format!("no answer within {seconds} s (rounds.validation_deadline_s)"),
                    });
            }
        }
        let answers = std::mem::take(&mut analysing.answers);
        match analysing.run.update(&answers) {
            Ok(Progress::Continue(request)) => {
                analysing.request = request;
                analysing.deadline = now + Duration::from_secs(self.config.rounds.validation_deadline_s);
            }
            Ok(Progress::Done(result)) => {
                match self.store.write_analysis(&result) {
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
                let next = analysing.index + 1;
                self.start_analyses(next, now);
            }
            Err(error) => {
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
        }
        true
    }

    /// When the running analysis's step closes on time alone.
    pub(super) fn analysis_deadline_of(analysing: &Analysing) -> Instant {
        analysing.deadline
    }
}
