//! The secure sum of a pool's validation statistics: while a round's model is validated, the sites of
//! one role (training sites, validate-only sites) run one [`SecureSum`] of [`InputKind::Counts`] over
//! their score histograms and stage confusion matrices, so that the aggregator learns the pooled
//! histogram (for the pooled AUC, ROC curve, calibration groups and decision curve) and the pooled
//! matrices (for the pooled κ of T, N and stage), never one site's.
//!
//! The layout is fixed: the positive and negative histograms and the matrices
//! ([`STATISTICS_TENSORS`]), each site's counts totalling at most [`STATISTICS_COUNTS_PER_PATIENT`]
//! times [`MAX_SITE_PATIENTS`]. The masked input travels with the site's metrics report.
//!
//! A pool with fewer sites than the study's threshold (`rounds.min_sites`, at least 2) is not pooled:
//! a sum over one site is that site's histogram. Its sites' own aggregate metrics are still reported.

use crate::secure::{Attempt, SecureSum, SumLayout};
use fedlnm_shared::config::{AggregatorConfig, SiteRole};
use fedlnm_shared::federation::{
    MAX_SITE_PATIENTS, STATISTICS_COUNTS_PER_PATIENT, STATISTICS_TENSORS, ScoreHistogram, StageConfusion,
    pool_statistics,
};
use fedlnm_shared::secagg::{InputKind, PeerVerifier, SecAggError, TensorSpec};
use std::sync::Arc;
use std::time::Instant;

/// The smallest pool whose statistics are summed.
#[must_use]
pub fn min_pool_sites(config: &AggregatorConfig) -> usize {
    config.rounds.min_sites.max(2)
}

/// A pool's decoded sum: its sites, their summed score histogram and stage confusion matrices.
pub type PoolOutcome = (Vec<String>, ScoreHistogram, StageConfusion);

/// The secure sum of one pool's statistics for one validated model.
pub struct PoolSum {
    role: SiteRole,
    /// The instance (its members are the pool's sites).
    pub sum: SecureSum,
    /// The sum, once decoded, or why there is none.
    outcome: Option<Result<PoolOutcome, String>>,
}

impl PoolSum {
    /// The pool of `role` for the model `model_digest` of `attempt` (its deadline: the validation
    /// deadline); `None` when the role has fewer sites than [`min_pool_sites`].
    ///
    /// # Errors
    /// The protocol configuration is invalid (a bug: the layout is fixed), named.
    pub fn new(
        config: &AggregatorConfig,
        attempt: &Attempt,
        model_digest: &str,
        role: SiteRole,
        authority: Option<Arc<dyn PeerVerifier>>,
    ) -> Result<Option<Self>, SecAggError> {
        let members: Vec<String> = config
            .sites
            .iter()
            .filter(|s| s.role == role)
            .map(|s| s.id.clone())
            .collect();
        if members.len() < min_pool_sites(config) {
            return Ok(None);
        }
        let layout = SumLayout {
            tensors: STATISTICS_TENSORS
                .iter()
                .map(|&(name, len)| TensorSpec {
                    name: name.to_owned(),
                    shape: vec![len],
                })
                .collect(),
            input: InputKind::Counts,
            max_site_total: MAX_SITE_PATIENTS * STATISTICS_COUNTS_PER_PATIENT,
        };
        let sum = SecureSum::new(config, attempt, model_digest, &members, layout, authority)?;
        Ok(Some(Self {
            role,
            sum,
            outcome: None,
        }))
    }

    #[must_use]
    pub fn role(&self) -> SiteRole {
        self.role
    }

    /// Closes stages that are complete or past their deadline; decodes the sum at the end. Returns
    /// whether anything changed.
    pub fn advance(&mut self, now: Instant) -> bool {
        let changed = self.sum.advance(now);
        if self.outcome.is_none()
            && let Some(outcome) = self.sum.outcome()
        {
            self.outcome = Some(outcome.clone().and_then(|(sites, counts)| {
                let (histogram, confusion) = pool_statistics(counts)?;
                Ok((sites, histogram, confusion))
            }));
        }
        changed
    }

    /// Whether the sum is decoded or has failed.
    #[must_use]
    pub fn is_done(&self) -> bool {
        self.outcome.is_some()
    }

    /// The decoded sum (the sites in it, their histogram and matrices), or why there is none
    /// (`None`: not done).
    #[must_use]
    pub fn outcome(&self) -> Option<&Result<PoolOutcome, String>> {
        self.outcome.as_ref()
    }
}
