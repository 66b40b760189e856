//! How a round ends: closing stages and phases as they complete or pass their deadline, and the slow
//! steps of a round (aggregating and committing) as jobs that the service runs off the study lock and
//! hands back to [`Study::job_done`].

use super::{Aggregating, Committing, Phase, Study, Validating};
use crate::aggregation::{FinishError, Poll, RoundAggregate};
use crate::secure::Attempt;
use crate::statistics::PoolSum;
use crate::store::{Committed, ModelBlob, StoreError};
use fedlnm_shared::clock::now_rfc3339;
use fedlnm_shared::config::SiteRole;
use fedlnm_shared::federation::fedavg::apply_delta;
use fedlnm_shared::federation::{PooledMetrics, PrivacySpent, RoundRecord, SiteRoundMetrics};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The wait before a failed commit's first retry; it doubles up to [`COMMIT_RETRY_MAX`].
const COMMIT_RETRY_FIRST: Duration = Duration::from_secs(2);
const COMMIT_RETRY_MAX: Duration = Duration::from_secs(300);

/// Which slow step a [`StudyJob`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    /// Average or unmask the round's updates, apply them, serialize and hash the new model.
    Aggregate { round: u64 },
    /// Write the validated round to disk (fsync, rename).
    Commit { round: u64 },
}

/// A slow step of the study, to run off the lock ([`Study::take_job`]).
pub struct StudyJob {
    pub kind: JobKind,
    id: u64,
    work: Box<dyn FnOnce() -> JobOutcome + Send>,
}

impl StudyJob {
    /// Does the work (blocking); hand the result to [`Study::job_done`].
    #[must_use]
    pub fn run(self) -> JobResult {
        JobResult {
            id: self.id,
            outcome: (self.work)(),
        }
    }
}

/// What a [`StudyJob`] produced.
pub struct JobResult {
    id: u64,
    outcome: JobOutcome,
}

pub(super) enum JobOutcome {
    Aggregated(Result<Box<(RoundAggregate, ModelBlob)>, FinishError>),
    Committed(Result<PathBuf, StoreError>),
}

impl Study {
    /// Moves the study on: closes stages and phases that are complete or past their deadline, and
    /// starts the slow steps of finished ones (as jobs, [`Self::take_job`]). Returns whether anything
    /// changed.
    pub fn tick(&mut self, now: Instant) -> bool {
        if matches!(self.phase, Phase::Analysing(_)) {
            return self.tick_analysis(now);
        }
        match &mut self.phase {
            Phase::Committing(committing) if committing.retry_at.is_some_and(|at| now >= at) => {
                let Phase::Committing(committing) = std::mem::replace(&mut self.phase, Phase::Finished)
                else {
                    return false;
                };
                tracing::info!(round = committing.record.round, "trying the commit again");
                self.schedule_commit(*committing);
                true
            }
            Phase::Finished | Phase::Aggregating(_) | Phase::Committing(_) | Phase::Analysing(_) => false,
            Phase::Training(training) => {
                let before = training.aggregation.closed_stages();
                match training.aggregation.advance(now) {
                    Poll::Pending => training.aggregation.closed_stages() != before,
                    Poll::Failed(reason) => {
                        tracing::warn!(
                            round = training.round,
                            reason,
                            "round abandoned; nothing committed; starting it again"
                        );
                        self.telemetry.rounds_failed.inc();
                        self.start_next_round(now);
                        true
                    }
                    Poll::Ready(finisher) => {
                        let round = training.round;
                        let aggregating = Aggregating {
                            round,
                            attempt: training.attempt,
                            training_started: training.started,
                            kind: training.aggregation.kind(),
                            job: self.jobs + 1,
                        };
                        let global = self.committed.model.clone();
                        let server_learning_rate = self.config.rounds.server_learning_rate as f32;
                        let work = move || {
                            let result = finisher().and_then(|mut aggregate| {
                                // The average becomes the new model (it is not kept in the record).
                                let average = std::mem::take(&mut aggregate.average_delta);
                                let weights = apply_delta(&global.weights, average, server_learning_rate)?;
                                let model = ModelBlob::new(round, weights, global.config.clone())?;
                                Ok(Box::new((aggregate, model)))
                            });
                            JobOutcome::Aggregated(result)
                        };
                        self.schedule(JobKind::Aggregate { round }, Box::new(work));
                        self.phase = Phase::Aggregating(aggregating);
                        true
                    }
                }
            }
            Phase::Validating(validating) => {
                let mut changed = false;
                for pool in &mut validating.pools {
                    changed |= pool.advance(now);
                }
                let all_in = self
                    .config
                    .sites
                    .iter()
                    .all(|s| validating.metrics.contains_key(&s.id));
                let pools_done = validating.pools.iter().all(PoolSum::is_done);
                // A pool still unmasking at the validation deadline gets one more stage timeout.
                let hard_stop = validating.deadline + Duration::from_secs(self.config.rounds.stage_timeout_s);
                if (all_in || now >= validating.deadline) && pools_done || now >= hard_stop {
                    self.commit_validated(now);
                    return true;
                }
                changed
            }
        }
    }

    /// The slow step the last transition started, for the caller to run off the lock (once).
    pub fn take_job(&mut self) -> Option<StudyJob> {
        self.pending_job.take()
    }

    /// The result of a job from [`Self::take_job`]; one of an earlier, abandoned phase is ignored.
    pub fn job_done(&mut self, result: JobResult, now: Instant) {
        match (&self.phase, result.outcome) {
            (Phase::Aggregating(aggregating), JobOutcome::Aggregated(outcome))
                if aggregating.job == result.id =>
            {
                let Phase::Aggregating(aggregating) = std::mem::replace(&mut self.phase, Phase::Finished)
                else {
                    return;
                };
                self.aggregated(aggregating, outcome, now);
            }
            (Phase::Committing(committing), JobOutcome::Committed(outcome))
                if committing.job == result.id =>
            {
                let Phase::Committing(committing) = std::mem::replace(&mut self.phase, Phase::Finished)
                else {
                    return;
                };
                self.commit_done(committing, outcome, now);
            }
            _ => tracing::warn!(
                job = result.id,
                "the result of a job of an earlier phase was ignored"
            ),
        }
    }

    fn schedule(&mut self, kind: JobKind, work: Box<dyn FnOnce() -> JobOutcome + Send>) {
        self.jobs += 1;
        self.pending_job = Some(StudyJob {
            kind,
            id: self.jobs,
            work,
        });
    }

    fn aggregated(
        &mut self,
        aggregating: Aggregating,
        outcome: Result<Box<(RoundAggregate, ModelBlob)>, FinishError>,
        now: Instant,
    ) {
        let round = aggregating.round;
        match outcome {
            Ok(aggregated) => {
                let (aggregate, model) = *aggregated;
                tracing::info!(
                    round,
                    contributors = ?aggregate.contributors,
                    dropped = ?aggregate.dropped,
                    total_samples = aggregate.total_samples,
                    digest = model.digest,
                    "round aggregated; validating the new model"
                );
                let deadline = now + Duration::from_secs(self.config.rounds.validation_deadline_s);
                let attempt = Attempt {
                    round,
                    attempt: aggregating.attempt,
                    instance: self.instance,
                    opened: now,
                    deadline,
                };
                let mut pools = Vec::new();
                for role in [SiteRole::Train, SiteRole::Validate] {
                    match PoolSum::new(
                        &self.config,
                        &attempt,
                        &model.digest,
                        role,
                        self.authority.clone(),
                    ) {
                        Ok(Some(pool)) => pools.push(pool),
                        Ok(None) => tracing::info!(
                            round,
                            %role,
                            "too few sites of this role to pool their statistics: only per-site metrics"
                        ),
                        Err(error) => {
                            tracing::error!(round, %role, %error, "cannot configure the pooled sum")
                        }
                    }
                }
                self.phase = Phase::Validating(Box::new(Validating {
                    round,
                    attempt: aggregating.attempt,
                    pools,
                    training_started: aggregating.training_started,
                    aggregation_seconds: now.duration_since(aggregating.training_started).as_secs_f64(),
                    kind: aggregating.kind,
                    aggregate,
                    model: Arc::new(model),
                    deadline,
                    metrics: BTreeMap::new(),
                }));
            }
            Err(error) => {
                tracing::error!(
                    round,
                    %error,
                    "the aggregate is not a valid model; round abandoned"
                );
                self.telemetry.rounds_failed.inc();
                self.start_next_round(now);
            }
        }
    }

    fn commit_validated(&mut self, now: Instant) {
        let Phase::Validating(validating) = std::mem::replace(&mut self.phase, Phase::Finished) else {
            return;
        };
        let sites: Vec<SiteRoundMetrics> = validating.metrics.into_values().collect();
        let round = validating.round;
        let pool = |role: SiteRole| pooled(round, role, &validating.pools, &sites);
        let record = RoundRecord {
            study: self.config.study.clone(),
            round: validating.round,
            model_digest: validating.model.digest.clone(),
            model_config_digest: validating.model.config_digest.clone(),
            aggregation: validating.kind,
            contributors: validating.aggregate.contributors.clone(),
            total_samples: validating.aggregate.total_samples,
            dropped: validating.aggregate.dropped.clone(),
            aggregation_seconds: validating.aggregation_seconds,
            round_seconds: now.duration_since(validating.training_started).as_secs_f64(),
            committed_at: now_rfc3339(),
            pooled_train_sites: pool(SiteRole::Train),
            pooled_validation_sites: pool(SiteRole::Validate),
            privacy: self.privacy_spent(validating.round),
            sites,
        };
        self.schedule_commit(Committing {
            record,
            model: validating.model,
            job: 0,
            retry_at: None,
            failures: 0,
        });
    }

    /// The differential privacy spent once round `round` is committed: every round of the study ran
    /// with the configured noise (the setting is the study's; each record states its own).
    fn privacy_spent(&self, round: u64) -> Option<PrivacySpent> {
        let privacy = &self.config.privacy;
        if !privacy.is_on() {
            return None;
        }
        PrivacySpent::after(privacy.noise_multiplier, privacy.clip_norm, privacy.delta, round)
            .inspect_err(|error| tracing::error!(round, %error, "cannot account the privacy spent"))
            .ok()
    }

    /// Starts the job that writes `committing`'s round to disk.
    fn schedule_commit(&mut self, committing: Committing) {
        let store = self.store.clone();
        let (job_record, job_model) = (committing.record.clone(), committing.model.clone());
        let work = move || JobOutcome::Committed(store.commit(&job_record, &job_model));
        self.schedule(
            JobKind::Commit {
                round: committing.record.round,
            },
            Box::new(work),
        );
        self.phase = Phase::Committing(Box::new(Committing {
            job: self.jobs,
            retry_at: None,
            ..committing
        }));
    }

    fn commit_done(
        &mut self,
        committing: Box<Committing>,
        outcome: Result<PathBuf, StoreError>,
        now: Instant,
    ) {
        let Committing {
            record,
            model,
            failures,
            ..
        } = *committing;
        match outcome {
            Ok(path) => {
                tracing::info!(
                    round = record.round,
                    path = %path.display(),
                    pooled_train_auc = ?record.pooled_train_sites.as_ref().and_then(|p| p.auc),
                    pooled_validation_auc = ?record.pooled_validation_sites.as_ref().and_then(|p| p.auc),
                    "round committed"
                );
                self.telemetry.rounds_committed.inc();
                self.telemetry
                    .last_committed_round
                    .set(i64::try_from(record.round).unwrap_or(i64::MAX));
                self.telemetry
                    .contributing_sites
                    .set(i64::try_from(record.contributors.len()).unwrap_or(0));
                self.telemetry.round_seconds.set(record.round_seconds);
                if let Some(privacy) = &record.privacy {
                    self.telemetry.privacy_epsilon.set(privacy.epsilon_study);
                }
                self.telemetry.aggregation_seconds.set(record.aggregation_seconds);
                self.committed = Committed { record, model };
            }
            Err(error @ StoreError::Io { .. }) => {
                // The disk refused (full, read-only, a file-size limit): the round is validated and
                // whole in memory, so only its write is tried again, never its training.
                let wait = COMMIT_RETRY_FIRST
                    .saturating_mul(1 << failures.min(6))
                    .min(COMMIT_RETRY_MAX);
                tracing::error!(
                    %error,
                    round = record.round,
                    retry_in_s = wait.as_secs(),
                    "cannot commit the round; its write is tried again (the validated round is kept)"
                );
                self.telemetry.rounds_failed.inc();
                self.phase = Phase::Committing(Box::new(Committing {
                    record,
                    model,
                    job: 0,
                    retry_at: Some(now + wait),
                    failures: failures + 1,
                }));
                return;
            }
            Err(error) => {
                // Nothing was committed: the round is trained again from the last committed model.
                tracing::error!(%error, round = record.round, "cannot commit the round; it will be run again");
                self.telemetry.rounds_failed.inc();
            }
        }
        self.start_next_round(now);
    }

    /// Whether round `round` is being written to disk.
    #[must_use]
    pub fn is_committing(&self, round: u64) -> bool {
        matches!(&self.phase, Phase::Committing(c) if c.record.round == round)
    }

    /// The next instant at which [`Self::tick`] may change something on time alone.
    #[must_use]
    pub fn next_deadline(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Training(training) => training.aggregation.next_deadline(),
            Phase::Validating(validating) => validating
                .pools
                .iter()
                .filter_map(|pool| pool.sum.next_deadline())
                .chain([
                    validating.deadline,
                    validating.deadline + Duration::from_secs(self.config.rounds.stage_timeout_s),
                ])
                .filter(|&at| at > Instant::now())
                .min()
                .or(Some(validating.deadline)),
            Phase::Committing(committing) => committing.retry_at,
            Phase::Analysing(analysing) => Some(self.analysis_deadline_of(analysing)),
            Phase::Aggregating(_) | Phase::Finished => None,
        }
    }
}

/// The pooled metrics of `role` from its pool's secure sum: `None` without a pool, when the sum
/// failed (too few sites uploaded, a protocol failure), or when it does not match what its sites
/// reported (each logged).
fn pooled(
    round: u64,
    role: SiteRole,
    pools: &[PoolSum],
    reports: &[SiteRoundMetrics],
) -> Option<PooledMetrics> {
    let pool = pools.iter().find(|pool| pool.role() == role)?;
    let (sites, histogram, confusion) = match pool.outcome() {
        Some(Ok(sum)) => sum.clone(),
        Some(Err(reason)) => {
            tracing::warn!(round, %role, reason, "the pooled sum of statistics failed: no pooled metrics");
            return None;
        }
        None => {
            tracing::warn!(round, %role, "the pooled sum of statistics did not end in time: no pooled metrics");
            return None;
        }
    };
    let pooled = PooledMetrics {
        stage_confusion: Some(confusion),
        ..PooledMetrics::from_histogram(sites, histogram)
            .inspect_err(|error| tracing::warn!(round, %role, %error, "the pooled histogram is unusable"))
            .ok()?
    };
    let members: Vec<&SiteRoundMetrics> = reports.iter().filter(|r| r.role == role).collect();
    match pooled.check_against(&members) {
        Ok(()) => Some(pooled),
        Err(reason) => {
            tracing::warn!(round, %role, reason, "the pooled sum does not match the sites' reports: not pooled");
            None
        }
    }
}
