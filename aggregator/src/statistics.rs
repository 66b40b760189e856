//! The secure sum of a pool's validation statistics: while a round's model is validated, the sites of
//! one role (training sites, validate-only sites) run one secure-aggregation instance of
//! [`InputKind::Counts`] over their score histograms and stage confusion matrices, so that the
//! aggregator learns the pooled histogram (for the pooled AUC, ROC curve, calibration groups and
//! decision curve) and the pooled matrices (for the pooled κ of T, N and stage), never one site's.
//!
//! The instance is the training rounds' protocol ([`SecureAggregation`]: the same stages, timeouts,
//! dropout handling and refusals), configured for counts: the positive and negative histograms
//! ([`STATISTICS_TENSORS`]), each site's counts totalling at most [`STATISTICS_COUNTS_PER_PATIENT`]
//! times [`MAX_SITE_PATIENTS`]. A site's
//! protocol id is its 1-based position among all the study's sites, so that the two pools are
//! distinct instances (distinct participants, hence configuration hashes) even at equal sizes. The
//! masked input travels with the site's metrics report; unmasking the 20,084-element sum is cheap and
//! runs under the study lock.
//!
//! A pool with fewer sites than the study's threshold (`rounds.min_sites`, at least 2) is not pooled:
//! a sum over one site is that site's histogram. Its sites' own aggregate metrics are still reported.

use crate::aggregation::{Aggregation, AggregationError, Upload};
use crate::secure::{Attempt, Drive, SecureAggregation, security};
use fedlnm_protocol::{RoundAggregation, SecAggStage, UpdateFormat};
use fedlnm_shared::config::{AggregatorConfig, SiteRole};
use fedlnm_shared::federation::{
    MAX_SITE_PATIENTS, STATISTICS_COUNTS_PER_PATIENT, STATISTICS_TENSORS, ScoreHistogram, StageConfusion,
    pool_statistics,
};
use fedlnm_shared::secagg::{
    InputKind, PeerVerifier, QuantizationConfig, SecAggConfig, SecAggError, SiteId, TensorSpec,
};
use std::collections::BTreeMap;
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
    secure: SecureAggregation,
    /// The sum, once decoded: the sites in it, their summed histogram and stage confusion matrices;
    /// or why there is none.
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
        let mut everyone: Vec<&str> = config.sites.iter().map(|s| s.id.as_str()).collect();
        everyone.sort_unstable();
        let ids: BTreeMap<String, SiteId> = everyone
            .iter()
            .enumerate()
            .filter(|(_, name)| config.sites.iter().any(|s| s.id == **name && s.role == role))
            .map(|(k, name)| {
                (
                    (*name).to_owned(),
                    SiteId(u32::try_from(k + 1).unwrap_or(u32::MAX)),
                )
            })
            .collect();
        let n = ids.len();
        if n < min_pool_sites(config) {
            return Ok(None);
        }
        let secagg_config = SecAggConfig {
            study_id: config.study.clone(),
            round: attempt.round,
            model_version: attempt.model_version(model_digest),
            participants: ids.values().copied().collect(),
            // The protocol's threat model sets the least t; the pool needs the study's threshold.
            threshold: config.rounds.threat_model.threshold(n, config.rounds.min_sites),
            tensors: STATISTICS_TENSORS
                .iter()
                .map(|&(name, len)| TensorSpec {
                    name: name.to_owned(),
                    shape: vec![len],
                })
                .collect(),
            fedbn_exclude: Vec::new(),
            quantization: QuantizationConfig {
                max_sample_count: MAX_SITE_PATIENTS * STATISTICS_COUNTS_PER_PATIENT,
                ..QuantizationConfig::default()
            },
            max_delta_norm: 1.0,
            input: InputKind::Counts,
            privacy: None,
            security: security(config.rounds.threat_model, &ids),
        };
        let secure = SecureAggregation::from_parts(secagg_config, ids, config, attempt, authority)?;
        Ok(Some(Self {
            role,
            secure,
            outcome: None,
        }))
    }

    #[must_use]
    pub fn role(&self) -> SiteRole {
        self.role
    }

    /// Whether `site` is a member of this pool.
    #[must_use]
    pub fn has(&self, site: &str) -> bool {
        self.secure.ids().contains_key(site)
    }

    /// What `site`'s validation task carries: the instance's configuration and the site's id;
    /// `None` when the site cannot join (not a member, or a stage closed without it).
    #[must_use]
    pub fn task_fields(&self, site: &str) -> Option<(Box<SecAggConfig>, SiteId)> {
        match self.secure.task_fields(site)? {
            RoundAggregation::Secure { config, site_id } => Some((config, site_id)),
            RoundAggregation::Plain => None,
        }
    }

    /// A protocol message (keys, shares, unmasking).
    ///
    /// # Errors
    /// As the training rounds' secure aggregation.
    pub fn accept_message(
        &mut self,
        site: &str,
        stage: SecAggStage,
        payload: &[u8],
    ) -> Result<(), AggregationError> {
        self.secure.accept_message(site, stage, payload)
    }

    /// The reply of a closed stage; `None` while it is open.
    #[must_use]
    pub fn reply(&self, site: &str, stage: SecAggStage) -> Option<Result<Vec<u8>, AggregationError>> {
        self.secure.reply(site, stage)
    }

    /// The largest masked input accepted.
    #[must_use]
    pub fn max_upload_bytes(&self) -> u64 {
        self.secure.max_upload_bytes()
    }

    /// A site's masked histograms (sent with its metrics report).
    ///
    /// # Errors
    /// A malformed input, a closed stage, a second input.
    pub fn accept_masked(&mut self, site: &str, payload: &[u8]) -> Result<(), AggregationError> {
        if payload.len() as u64 > self.max_upload_bytes() {
            return Err(AggregationError::Invalid(format!(
                "the masked statistics are {} bytes, more than the {} of a masked histogram",
                payload.len(),
                self.max_upload_bytes()
            )));
        }
        self.secure.accept_upload(&Upload {
            site,
            format: UpdateFormat::MaskedInput,
            n_samples: 0,
            payload,
        })
    }

    /// Closes stages that are complete or past their deadline; decodes the sum at the end. Returns
    /// whether anything changed.
    pub fn advance(&mut self, now: Instant) -> bool {
        if self.outcome.is_some() {
            return false;
        }
        let before = self.secure.closed_stages();
        match self.secure.drive(now) {
            Drive::Pending => self.secure.closed_stages() != before,
            Drive::Failed(reason) => {
                self.outcome = Some(Err(reason));
                true
            }
            Drive::Unmasked(mut server) => {
                self.outcome = Some(
                    server
                        .finish_counts()
                        .map_err(|error| error.to_string())
                        .and_then(|sum| {
                            let sites = sum.survivors.iter().map(|&id| self.secure.name_of(id)).collect();
                            let (histogram, confusion) = pool_statistics(sum.counts)?;
                            Ok((sites, histogram, confusion))
                        }),
                );
                true
            }
        }
    }

    /// Whether the sum is decoded or has failed.
    #[must_use]
    pub fn is_done(&self) -> bool {
        self.outcome.is_some()
    }

    /// The next instant at which [`Self::advance`] may close a stage on time alone.
    #[must_use]
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.is_done() {
            None
        } else {
            self.secure.next_deadline()
        }
    }

    /// `site`'s node restarted: its secrets of this instance are gone; no stage waits for it.
    pub fn forget(&mut self, site: &str) -> bool {
        self.secure.forget(site)
    }

    /// `site` reported its metrics without masked statistics: no stage waits for it.
    pub fn leave(&mut self, site: &str) {
        self.secure.exclude(site);
    }

    /// The decoded sum (the sites in it, their histogram and matrices), or why there is none
    /// (`None`: not done).
    #[must_use]
    pub fn outcome(&self) -> Option<&Result<PoolOutcome, String>> {
        self.outcome.as_ref()
    }
}
