//! One secure sum of integer vectors between some of the study's sites: an instance of the training
//! rounds' protocol ([`SecureAggregation`]: the same stages, timeouts, dropout handling and refusals)
//! configured for counts ([`InputKind::Counts`]: the pools' validation statistics) or for the ring
//! Z_2^64 ([`InputKind::Ring`]: an analysis's Newton step). The aggregator learns the sum over the
//! sites in it, never one site's vector. A site's protocol id is its 1-based position among all the
//! study's sites, so that two sums between different sites are distinct instances (distinct
//! participants, hence configuration hashes) even at equal sizes. Unmasking a sum of a few thousand
//! elements is cheap and runs under the study lock.

use super::{Attempt, Drive, SecureAggregation, security};
use crate::aggregation::{Aggregation, AggregationError, Upload};
use fedlnm_protocol::{RoundAggregation, SecAggStage, UpdateFormat};
use fedlnm_shared::config::AggregatorConfig;
use fedlnm_shared::secagg::{
    InputKind, PeerVerifier, QuantizationConfig, SecAggConfig, SecAggError, SiteId, TensorSpec,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

/// What a secure sum holds once unmasked: the sites in it and one summed vector per tensor.
pub type SumOutcome = (Vec<String>, Vec<Vec<u64>>);

/// What a sum adds: its layout and input kind, and (counts) the most one site may count in all.
pub struct SumLayout {
    pub tensors: Vec<TensorSpec>,
    pub input: InputKind,
    pub max_site_total: u64,
}

/// One secure sum between `members` of the study.
pub struct SecureSum {
    secure: SecureAggregation,
    outcome: Option<Result<SumOutcome, String>>,
}

impl SecureSum {
    /// The sum of `layout` between `members` for the model `model_digest` of `attempt` (the
    /// attempt's deadline closes the masked inputs), with the study's threshold.
    ///
    /// # Errors
    /// The protocol configuration is invalid, named.
    pub fn new(
        config: &AggregatorConfig,
        attempt: &Attempt,
        model_digest: &str,
        members: &[String],
        layout: SumLayout,
        authority: Option<Arc<dyn PeerVerifier>>,
    ) -> Result<Self, SecAggError> {
        let mut everyone: Vec<&str> = config.sites.iter().map(|s| s.id.as_str()).collect();
        everyone.sort_unstable();
        let ids: BTreeMap<String, SiteId> = everyone
            .iter()
            .enumerate()
            .filter(|(_, name)| members.iter().any(|m| m == *name))
            .map(|(k, name)| {
                (
                    (*name).to_owned(),
                    SiteId(u32::try_from(k + 1).unwrap_or(u32::MAX)),
                )
            })
            .collect();
        let n = ids.len();
        let secagg_config = SecAggConfig {
            study_id: config.study.clone(),
            round: attempt.round,
            model_version: attempt.model_version(model_digest),
            participants: ids.values().copied().collect(),
            // The protocol's threat model sets the least t; a sum needs the study's threshold.
            threshold: config.rounds.threat_model.threshold(n, config.rounds.min_sites),
            tensors: layout.tensors,
            fedbn_exclude: Vec::new(),
            quantization: QuantizationConfig {
                max_sample_count: layout.max_site_total,
                ..QuantizationConfig::default()
            },
            max_delta_norm: 1.0,
            input: layout.input,
            privacy: None,
            security: security(config.rounds.threat_model, &ids),
            // Sums of statistics are a few thousand elements: the complete graph costs little.
            graph: fedlnm_shared::secagg::Graph::Complete,
        };
        let secure = SecureAggregation::from_parts(secagg_config, ids, config, attempt, authority)?;
        Ok(Self {
            secure,
            outcome: None,
        })
    }

    /// The instance's configuration (what every member's task carries).
    #[must_use]
    pub fn config(&self) -> &SecAggConfig {
        self.secure.secagg_config()
    }

    /// Each member's protocol id.
    #[must_use]
    pub fn ids(&self) -> &BTreeMap<String, SiteId> {
        self.secure.ids()
    }

    /// Whether `site` is a member of this sum.
    #[must_use]
    pub fn has(&self, site: &str) -> bool {
        self.secure.ids().contains_key(site)
    }

    /// What `site`'s task carries: the instance's configuration and the site's id; `None` when the
    /// site cannot join (not a member, or a stage closed without it).
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

    /// A site's masked input (sent with its report).
    ///
    /// # Errors
    /// A malformed or oversized input, a closed stage, a second input.
    pub fn accept_masked(&mut self, site: &str, payload: &[u8]) -> Result<(), AggregationError> {
        let limit = self.secure.max_upload_bytes();
        if payload.len() as u64 > limit {
            return Err(AggregationError::Invalid(format!(
                "the masked input is {} bytes, more than the {limit} of this sum",
                payload.len()
            )));
        }
        self.secure.accept_upload(&Upload {
            site,
            format: UpdateFormat::MaskedInput,
            n_samples: 0,
            payload: Arc::new(payload.to_vec()),
            scan: None,
        })
    }

    /// Closes stages that are complete or past their deadline; unmasks at the end. Returns whether
    /// anything changed.
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
                let sum = match self.secure.secagg_config().input {
                    InputKind::Ring => server.finish_ring(),
                    _ => server.finish_counts(),
                };
                self.outcome = Some(sum.map_err(|error| error.to_string()).map(|sum| {
                    let sites = sum.survivors.iter().map(|&id| self.secure.name_of(id)).collect();
                    (sites, sum.counts)
                }));
                true
            }
        }
    }

    /// Whether the sum is unmasked or has failed.
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

    /// `site` went on without this sum (reported without its masked input): no stage waits for it.
    pub fn leave(&mut self, site: &str) {
        self.secure.exclude(site);
    }

    /// The unmasked sum, or why there is none (`None`: not done).
    #[must_use]
    pub fn outcome(&self) -> Option<&Result<SumOutcome, String>> {
        self.outcome.as_ref()
    }
}
