//! What sites send while a round runs, besides uploads: secure-aggregation messages (of the training
//! round, or of a pool's secure sum of statistics while the new model is validated), their replies
//! once a stage closes, and validation reports with their masked statistics.

use super::{Phase, Study, to_status};
use crate::statistics::PoolSum;
use fedlnm_protocol::{SecAggStage, Status};
use fedlnm_shared::config::SiteRole;
use fedlnm_shared::federation::{ScoringStatistics, SiteRoundMetrics};

impl Study {
    /// A secure-aggregation message, of the training round or, while its model is validated, of the
    /// secure sum of the site's pool; returns the attempt of the round it went to (a round that is
    /// abandoned and started again is a new attempt, with a new protocol instance).
    ///
    /// # Errors
    /// As [`Self::accept_upload`].
    pub fn accept_message(
        &mut self,
        site: &str,
        round: u64,
        stage: SecAggStage,
        payload: &[u8],
    ) -> Result<u64, Status> {
        if let Phase::Validating(validating) = &mut self.phase
            && validating.round == round
        {
            let pool = pool_of(&mut validating.pools, site).ok_or_else(|| {
                Status::failed_precondition(format!(
                    "round {round} is being validated and site {site} is in no pooled sum of statistics"
                ))
            })?;
            pool.sum.accept_message(site, stage, payload).map_err(to_status)?;
            return Ok(validating.attempt);
        }
        if let Phase::Analysing(analysing) = &mut self.phase {
            return Self::accept_analysis_message(analysing, site, round, stage, payload);
        }
        let training = self.training_round(round)?;
        training
            .aggregation
            .accept_message(site, stage, payload)
            .map_err(to_status)?;
        Ok(training.attempt)
    }

    /// Whether the model of `round` is being validated or an analysis runs (secure-aggregation
    /// messages then belong to a secure sum of statistics, which validate-only sites take part in
    /// too).
    #[must_use]
    pub fn sums_statistics(&self, round: u64) -> bool {
        match &self.phase {
            Phase::Validating(v) => v.round == round,
            Phase::Analysing(_) => true,
            _ => false,
        }
    }

    /// The reply of a closed secure-aggregation stage of `attempt`; `None` while it is open.
    #[must_use]
    pub fn reply(
        &self,
        site: &str,
        round: u64,
        attempt: u64,
        stage: SecAggStage,
    ) -> Option<Result<Vec<u8>, Status>> {
        match &self.phase {
            Phase::Training(training) if training.round == round && training.attempt == attempt => training
                .aggregation
                .reply(site, stage)
                .map(|reply| reply.map_err(to_status)),
            Phase::Validating(validating) if validating.round == round && validating.attempt == attempt => {
                validating
                    .pools
                    .iter()
                    .find(|pool| pool.sum.has(site))
                    .and_then(|pool| pool.sum.reply(site, stage))
                    .map(|reply| reply.map_err(to_status))
            }
            Phase::Analysing(analysing) => match analysing.sum_ref(round, attempt) {
                Some(sum) => sum.reply(site, stage).map(|reply| reply.map_err(to_status)),
                None => Some(Err(Status::aborted(format!(
                    "the secure sum of round {round}, start {attempt} is over; the node takes its next task"
                )))),
            },
            _ => Some(Err(Status::aborted(format!(
                "round {round} is no longer aggregating (finished, abandoned or restarted); the node \
                 rejoins with its next task"
            )))),
        }
    }

    /// A site's validation metrics of the model of `round`.
    ///
    /// # Errors
    /// Not the round under validation, another model's digest, a second report, metrics that fail
    /// their checks or were scored with other normalisation statistics than the study's rule gives
    /// the site ([`ScoringStatistics::for_site`]: a node of another release); masked statistics that
    /// the site's pool refuses (then nothing is stored: the node reports again without them if the
    /// pool's stage closed without it).
    pub fn accept_metrics(
        &mut self,
        site: &str,
        role: SiteRole,
        round: u64,
        model_digest: &str,
        mut metrics: SiteRoundMetrics,
        masked_statistics: &[u8],
    ) -> Result<(), Status> {
        let expected = ScoringStatistics::for_site(
            &self.local_tensors,
            self.config.rounds.adapts_normalisation(),
            role,
        );
        let Phase::Validating(validating) = &mut self.phase else {
            return Err(Status::failed_precondition(format!(
                "no model is being validated (metrics for round {round} refused)"
            )));
        };
        if validating.round != round {
            return Err(Status::failed_precondition(format!(
                "round {} is being validated, not round {round}",
                validating.round
            )));
        }
        if model_digest != validating.model.digest {
            return Err(Status::invalid_argument(format!(
                "the metrics are of model {model_digest}, not of round {round}'s model {}",
                validating.model.digest
            )));
        }
        if validating.metrics.contains_key(site) {
            return Err(Status::already_exists(format!(
                "site {site} already reported metrics for round {round}"
            )));
        }
        metrics
            .check()
            .map_err(|e| Status::invalid_argument(format!("metrics of site {site}: {e}")))?;
        if metrics.normalisation != Some(expected) {
            let scored = metrics
                .normalisation
                .map_or_else(|| "do not say".to_owned(), |s| format!("say \"{s}\""));
            return Err(Status::invalid_argument(format!(
                "metrics of site {site}: the study's rule gives this site the normalisation statistics \
                 \"{expected}\" (rounds.normalisation_statistics, fedbn), but its metrics {scored}: is \
                 its fedlnm-node another release than the aggregator?"
            )));
        }
        if !masked_statistics.is_empty() {
            let pool = pool_of(&mut validating.pools, site).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "site {site} sent masked statistics but is in no pooled sum of round {round}"
                ))
            })?;
            pool.sum
                .accept_masked(site, masked_statistics)
                .map_err(to_status)?;
        } else if let Some(pool) = pool_of(&mut validating.pools, site) {
            pool.sum.leave(site);
        }
        metrics.site = site.to_owned();
        metrics.role = role;
        tracing::info!(site, round, auc = ?metrics.auc, n = metrics.n_patients, "validation metrics received");
        validating.metrics.insert(site.to_owned(), metrics);
        Ok(())
    }
}

/// The pool `site` belongs to, if any.
fn pool_of<'a>(pools: &'a mut [PoolSum], site: &str) -> Option<&'a mut PoolSum> {
    pools.iter_mut().find(|pool| pool.sum.has(site))
}
