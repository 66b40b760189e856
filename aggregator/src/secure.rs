//! Secure aggregation as the round's [`Aggregation`]: the transport and timing around the Bonawitz
//! state machine of `fedlnm_shared::secagg` (SecAggServer). The aggregator only ever holds masked
//! inputs and their sum; the decoded result is Σ n_k Δ_k and Σ n_k.
//!
//! Stages and when they close (all invited sites answered, or the deadline):
//! keys and shares: `stage_timeout_s` after the stage opened; masked inputs: the round deadline;
//! consistency check (against a malicious aggregator, `rounds.threat_model`: the survivors sign the
//! survivor set) and unmasking: `stage_timeout_s` after the stage before closed. Against a malicious
//! aggregator the service checks each site's signatures with the study CA on receipt, so that one
//! site's bad signature makes it a dropout instead of aborting the instance at every honest site.
//! Messages are encoded by `fedlnm_protocol::payload`; each names its study, round, configuration
//! hash and site, and the site must be the caller's certificate identity. Unmasking and decoding
//! the sum run in the round's [`crate::aggregation::Finisher`], off the study lock.

use crate::aggregation::{Aggregation, AggregationError, Poll, RoundAggregate, Upload};
use fedlnm_protocol::payload::{decode, masked_input_range};
use fedlnm_protocol::{RoundAggregation, SecAggStage, UpdateFormat};
use fedlnm_shared::config::{AggregatorConfig, ThreatModel};
use fedlnm_shared::federation::{AggregationKind, LocalTensors};
use fedlnm_shared::secagg::{
    self, AdvertiseKeys, ConsistencyResponse, DistributedNoise, InputKind, ModelVersion, PeerVerifier,
    QuantizationConfig, RoundConfig, RoundStage, SecAggConfig, SecAggServer, Security, ShareKeys, SiteId,
    UnmaskResponse,
};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod stages;
mod sum;
pub(crate) use stages::Drive;
pub use sum::{SecureSum, SumLayout, SumOutcome};

/// One start of a round: its number, which start it is (an abandoned round starts again as a new
/// attempt, with its own protocol instance), the random id of the aggregator process that opened it,
/// when it opened and its upload deadline.
#[derive(Debug, Clone, Copy)]
pub struct Attempt {
    pub round: u64,
    pub attempt: u64,
    pub instance: u64,
    pub opened: Instant,
    pub deadline: Instant,
}

impl Attempt {
    /// The [`ModelVersion`] of this attempt on the model `digest`.
    #[must_use]
    pub fn model_version(&self, digest: &str) -> ModelVersion {
        ModelVersion::new(digest, self.attempt).of_instance(self.instance)
    }
}

/// The protection of an instance between the sites `ids` (name → protocol id) under the study's
/// threat model: against a malicious aggregator, each id's identity is its site name (the site id in
/// its certificate).
pub(crate) fn security(threat_model: ThreatModel, ids: &BTreeMap<String, SiteId>) -> Security {
    if threat_model.is_malicious() {
        Security::MaliciousServer {
            identities: ids.iter().map(|(name, &id)| (id, name.clone())).collect(),
        }
    } else {
        Security::CuriousServer
    }
}

fn name_of(ids: &BTreeMap<String, SiteId>, id: SiteId) -> String {
    ids.iter()
        .find(|(_, v)| **v == id)
        .map_or_else(|| id.to_string(), |(name, _)| name.clone())
}

/// The secure aggregation of one round.
pub struct SecureAggregation {
    config: RoundConfig,
    /// What every training task of this attempt carries.
    secagg_config: SecAggConfig,
    server: SecAggServer,
    /// The server was handed to the finisher (unmasking).
    finishing: bool,
    failed: Option<String>,
    ids: BTreeMap<String, SiteId>,
    stage_timeout: Duration,
    stage_deadline: Instant,
    round_deadline: Instant,
    advertised: BTreeSet<SiteId>,
    shared: BTreeSet<SiteId>,
    uploaded: BTreeSet<SiteId>,
    responded: BTreeSet<SiteId>,
    /// Sites that lost this attempt's secrets (their node restarted after it took part): no stage
    /// waits for them, and they are not offered the round again.
    lost: BTreeSet<SiteId>,
    /// Sites whose signature of the survivor set was accepted (round 3).
    signed: BTreeSet<SiteId>,
    /// The encoded key directory for each site of U1 (in a SecAgg+ graph, its two-hop neighbourhood's
    /// entries: [`secagg::KeyDirectory::for_site`]).
    directory: Option<BTreeMap<SiteId, Vec<u8>>>,
    deliveries: BTreeMap<SiteId, Vec<u8>>,
    consistency_check: Option<Vec<u8>>,
    unmask_request: Option<Vec<u8>>,
    u1: Vec<SiteId>,
    u2: Vec<SiteId>,
    u3: Vec<SiteId>,
    /// The sites asked to unmask: the signers of U3 (U3 itself against a curious aggregator).
    u4: Vec<SiteId>,
}

impl SecureAggregation {
    /// Configures one attempt of a round over the tensors of `global` that are not `local_tensors`,
    /// for the training sites `sites` (sorted; site k gets protocol id k + 1), with the threshold of
    /// the study's threat model and communication graph (`rounds.secure_aggregation_graph`:
    /// [`ThreatModel::secure_aggregation_graph`], per neighbourhood for SecAgg+); `authority` checks the sites'
    /// signatures on receipt.
    ///
    /// # Errors
    /// The protocol configuration is invalid (e.g. quantization headroom), named.
    pub fn new(
        config: &AggregatorConfig,
        attempt: &Attempt,
        global: &crate::store::ModelBlob,
        local_tensors: &LocalTensors,
        sites: &[String],
        authority: Option<Arc<dyn PeerVerifier>>,
    ) -> Result<Self, secagg::SecAggError> {
        let ids: BTreeMap<String, SiteId> = sites
            .iter()
            .enumerate()
            .map(|(k, site)| (site.clone(), SiteId(u32::try_from(k + 1).unwrap_or(u32::MAX))))
            .collect();
        // The graph (complete, or SecAgg+'s) and its threshold, per neighbourhood for SecAgg+.
        let (graph, threshold) = config
            .rounds
            .threat_model
            .secure_aggregation_graph(
                ids.len(),
                config.rounds.min_sites,
                &config.rounds.secure_aggregation_graph,
            )
            .map_err(|reason| secagg::SecAggError::InvalidConfig {
                field: "graph",
                reason,
            })?;
        let secagg_config = SecAggConfig {
            study_id: config.study.clone(),
            round: attempt.round,
            // The attempt and the process's instance make every start of a round a distinct protocol
            // instance (its own configuration hash): nothing from an abandoned attempt, nor from the
            // aggregator process before a restart, is accepted by the next.
            model_version: attempt.model_version(&global.digest),
            participants: ids.values().copied().collect(),
            threshold,
            tensors: secagg::tensor_specs(&global.weights),
            fedbn_exclude: local_tensors.clone().into_names(),
            quantization: QuantizationConfig::for_ring(config.rounds.secure_aggregation_ring, ids.len()),
            max_delta_norm: config.rounds.max_delta_norm,
            input: InputKind::WeightedDelta,
            privacy: config.privacy.is_on().then_some(DistributedNoise {
                clip_norm: config.privacy.clip_norm,
                noise_multiplier: config.privacy.noise_multiplier,
            }),
            security: security(config.rounds.threat_model, &ids),
            graph,
        };
        Self::from_parts(secagg_config, ids, config, attempt, authority)
    }

    /// An instance of `secagg_config` between the sites `ids` (name → protocol id), with the study's
    /// stage timeout and `attempt`'s deadline for the masked inputs; `authority` checks the sites'
    /// signatures on receipt (malicious-server instances).
    ///
    /// # Errors
    /// The protocol configuration is invalid, named.
    pub(crate) fn from_parts(
        secagg_config: SecAggConfig,
        ids: BTreeMap<String, SiteId>,
        config: &AggregatorConfig,
        attempt: &Attempt,
        authority: Option<Arc<dyn PeerVerifier>>,
    ) -> Result<Self, secagg::SecAggError> {
        let round_config = secagg_config.clone().validate()?;
        let stage_timeout = Duration::from_secs(config.rounds.stage_timeout_s);
        let mut server = SecAggServer::new(round_config.clone());
        // A held masked input keeps its receiving permit (as a plain upload does): holding as many
        // as the permits allows sums them several at a time within the same memory bound.
        server.set_max_held(config.rounds.max_concurrent_uploads);
        if let Some(authority) = authority {
            server = server.with_verifier(authority);
        }
        Ok(Self {
            server,
            config: round_config,
            secagg_config,
            finishing: false,
            failed: None,
            ids,
            stage_timeout,
            stage_deadline: attempt.opened + stage_timeout,
            round_deadline: attempt.deadline,
            advertised: BTreeSet::new(),
            shared: BTreeSet::new(),
            uploaded: BTreeSet::new(),
            responded: BTreeSet::new(),
            lost: BTreeSet::new(),
            signed: BTreeSet::new(),
            directory: None,
            deliveries: BTreeMap::new(),
            consistency_check: None,
            unmask_request: None,
            u1: Vec::new(),
            u2: Vec::new(),
            u3: Vec::new(),
            u4: Vec::new(),
        })
    }

    /// No stage waits for `site` any more (it went on without this instance, e.g. reported its
    /// metrics without its masked statistics).
    pub(crate) fn exclude(&mut self, site: &str) {
        if let Some(&id) = self.ids.get(site) {
            self.lost.insert(id);
        }
    }

    /// The protocol id of each site.
    /// The configuration every task of this instance carries.
    pub(crate) fn secagg_config(&self) -> &SecAggConfig {
        &self.secagg_config
    }

    pub(crate) fn ids(&self) -> &BTreeMap<String, SiteId> {
        &self.ids
    }

    /// The name of a protocol id.
    pub(crate) fn name_of(&self, id: SiteId) -> String {
        name_of(&self.ids, id)
    }

    fn id(&self, site: &str) -> Result<SiteId, AggregationError> {
        self.ids.get(site).copied().ok_or_else(|| {
            AggregationError::Invalid(format!("site {site} is not a participant of this round"))
        })
    }

    /// Checks that a message's own site field is the caller.
    fn check_sender(site: &str, expected: SiteId, claimed: SiteId) -> Result<(), AggregationError> {
        if claimed == expected {
            Ok(())
        } else {
            Err(AggregationError::Invalid(format!(
                "site {site} sent a protocol message signed as {claimed}"
            )))
        }
    }

    /// The protocol's stage (`Done` once the server went to the finisher).
    fn stage(&self) -> RoundStage {
        if self.finishing {
            RoundStage::Done
        } else {
            self.server.stage()
        }
    }

    /// Whether a stage over `members` still waits for one of them (not `done`, not lost).
    fn waits_for(&self, members: &[SiteId], done: &BTreeSet<SiteId>) -> bool {
        members
            .iter()
            .any(|id| !done.contains(id) && !self.lost.contains(id))
    }

    /// Whether the instance has ended (handed out its server, or failed).
    pub(crate) fn is_closed(&self) -> bool {
        self.finishing || self.failed.is_some()
    }
}

fn invalid(error: fedlnm_protocol::payload::PayloadError) -> AggregationError {
    AggregationError::Invalid(error.to_string())
}

/// A protocol refusal: a message at the wrong stage, from a site no longer in the round, sent twice, or
/// made for another start of this round (abandoned, or opened by the aggregator process before a
/// restart) is a matter of timing (the site takes its next task); anything else is the message's fault.
fn protocol_error(error: &secagg::SecAggError) -> AggregationError {
    match error {
        secagg::SecAggError::ConfigMismatch { .. } => AggregationError::WrongTime(format!(
            "{error}: it was made for another start of this round (abandoned, or begun before the \
             aggregator restarted); take the next task"
        )),
        secagg::SecAggError::WrongStage { .. }
        | secagg::SecAggError::NotInRound { .. }
        | secagg::SecAggError::Duplicate { .. } => AggregationError::WrongTime(error.to_string()),
        _ => AggregationError::Invalid(error.to_string()),
    }
}

impl Aggregation for SecureAggregation {
    fn kind(&self) -> AggregationKind {
        AggregationKind::Secure
    }

    fn task_fields(&self, site: &str) -> Option<RoundAggregation> {
        let id = *self.ids.get(site)?;
        if self.is_closed() || self.lost.contains(&id) {
            return None;
        }
        // After the key stage a site that did not advertise cannot take part any more.
        if self.stage() != RoundStage::AdvertiseKeys && !self.u1.contains(&id) {
            return None;
        }
        Some(RoundAggregation::Secure {
            config: Box::new(self.secagg_config.clone()),
            site_id: id,
        })
    }

    fn max_upload_bytes(&self) -> u64 {
        // A MaskedInput: header (study, round, hash, site) and the vector of u64.
        (8 * self.config.vector_len() + 1024 + self.config.study_id().len()) as u64
    }

    fn accept_upload(&mut self, upload: &Upload<'_>) -> Result<(), AggregationError> {
        let id = self.id(upload.site)?;
        if upload.format != UpdateFormat::MaskedInput {
            return Err(AggregationError::Invalid(format!(
                "this round takes masked updates (secure aggregation), not {:?}",
                upload.format
            )));
        }
        if self.is_closed() {
            return Err(AggregationError::WrongTime(
                "the round's uploads are closed".to_owned(),
            ));
        }
        // Read in place: the masked vector is held in the bytes it arrived in, never decoded, and
        // summed with other held inputs.
        let (header, ring, elements) = masked_input_range(upload.bytes()).map_err(invalid)?;
        Self::check_sender(upload.site, id, header.site)?;
        self.server
            .hold_masked_bytes(&header, ring, Arc::clone(&upload.payload), elements)
            .map_err(|e| protocol_error(&e))?;
        self.uploaded.insert(id);
        Ok(())
    }

    fn accept_message(
        &mut self,
        site: &str,
        stage: SecAggStage,
        payload: &[u8],
    ) -> Result<(), AggregationError> {
        let id = self.id(site)?;
        if self.is_closed() {
            return Err(AggregationError::WrongTime(format!(
                "the {stage} stage is closed: this round's secure aggregation has ended"
            )));
        }
        match stage {
            SecAggStage::AdvertiseKeys => {
                let message: AdvertiseKeys = decode(payload, "key advertisement").map_err(invalid)?;
                Self::check_sender(site, id, message.header.site)?;
                self.server
                    .receive_keys(message)
                    .map_err(|e| protocol_error(&e))?;
                self.advertised.insert(id);
            }
            SecAggStage::ShareKeys => {
                let message: ShareKeys = decode(payload, "encrypted shares").map_err(invalid)?;
                Self::check_sender(site, id, message.header.site)?;
                self.server
                    .receive_shares(message)
                    .map_err(|e| protocol_error(&e))?;
                self.shared.insert(id);
            }
            SecAggStage::ConsistencySignature => {
                let message: ConsistencyResponse =
                    decode(payload, "survivor-set signature").map_err(invalid)?;
                Self::check_sender(site, id, message.header.site)?;
                self.server
                    .receive_consistency(message)
                    .map_err(|e| protocol_error(&e))?;
                self.signed.insert(id);
            }
            SecAggStage::UnmaskResponse => {
                let message: UnmaskResponse = decode(payload, "unmasking shares").map_err(invalid)?;
                Self::check_sender(site, id, message.header.site)?;
                self.server
                    .receive_unmask_response(message)
                    .map_err(|e| protocol_error(&e))?;
                self.responded.insert(id);
            }
            SecAggStage::UnmaskRequest | SecAggStage::ConsistencyCheck => {}
        }
        Ok(())
    }

    fn reply(&self, site: &str, stage: SecAggStage) -> Option<Result<Vec<u8>, AggregationError>> {
        let id = match self.id(site) {
            Ok(id) => id,
            Err(error) => return Some(Err(error)),
        };
        let aborted = || {
            Some(Err(AggregationError::WrongTime(
                "the secure aggregation of this round was abandoned".to_owned(),
            )))
        };
        if self.failed.is_some() {
            return aborted();
        }
        let left_out = |stage: &str| {
            Some(Err(AggregationError::WrongTime(format!(
                "the {stage} stage closed without site {site}; it rejoins at the next round"
            ))))
        };
        match stage {
            SecAggStage::AdvertiseKeys => match &self.directory {
                Some(_) if !self.u1.contains(&id) => left_out(stage.name()),
                Some(directories) => directories.get(&id).cloned().map(Ok),
                None => None,
            },
            SecAggStage::ShareKeys => {
                if matches!(self.stage(), RoundStage::AdvertiseKeys | RoundStage::ShareKeys) {
                    return None;
                }
                match self.deliveries.get(&id) {
                    Some(delivery) => Some(Ok(delivery.clone())),
                    None => left_out(stage.name()),
                }
            }
            SecAggStage::ConsistencyCheck if !self.config.is_authenticated() => Some(Err(
                AggregationError::Invalid("this round has no consistency check (honest-but-curious aggregator)".into()),
            )),
            // A site waits for the survivors only after its upload to this very instance: one that
            // uploaded to an abandoned start of the round would otherwise wait on this one forever.
            SecAggStage::ConsistencyCheck | SecAggStage::UnmaskRequest if !self.uploaded.contains(&id) => {
                Some(Err(AggregationError::WrongTime(format!(
                    "site {site} has no upload in the current start of round {}: its upload went to an \
                     abandoned one; take the next task",
                    self.config.round()
                ))))
            }
            SecAggStage::ConsistencyCheck => match &self.consistency_check {
                Some(_) if !self.u3.contains(&id) => left_out("masked-input"),
                Some(check) => Some(Ok(check.clone())),
                None => None,
            },
            SecAggStage::UnmaskRequest if self.config.is_authenticated() => Some(Err(AggregationError::Invalid(
                "this round checks the survivor set first: sign it (consistency check) to get the unmasking request"
                    .into(),
            ))),
            SecAggStage::UnmaskRequest | SecAggStage::ConsistencySignature => {
                let stage_before = if stage == SecAggStage::UnmaskRequest {
                    "masked-input"
                } else {
                    "consistency-check"
                };
                match &self.unmask_request {
                    Some(_) if !self.u4.contains(&id) => left_out(stage_before),
                    Some(request) => Some(Ok(request.clone())),
                    None => None,
                }
            }
            SecAggStage::UnmaskResponse => Some(Ok(Vec::new())),
        }
    }

    fn advance(&mut self, now: Instant) -> Poll {
        match self.drive(now) {
            Drive::Pending => Poll::Pending,
            Drive::Failed(reason) => Poll::Failed(reason),
            Drive::Unmasked(mut server) => {
                // Unmasking regenerates every mask stream: the finisher does it, off the lock.
                let ids = self.ids.clone();
                Poll::Ready(Box::new(move || {
                    let aggregate = server.finish()?;
                    let contributors: Vec<String> =
                        aggregate.survivors.iter().map(|&id| name_of(&ids, id)).collect();
                    let dropped = ids
                        .keys()
                        .filter(|site| !contributors.contains(site))
                        .cloned()
                        .collect();
                    Ok(RoundAggregate {
                        average_delta: aggregate.fedavg_delta,
                        total_samples: aggregate.total_samples,
                        contributors,
                        dropped,
                    })
                }))
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        if self.is_closed() {
            return None;
        }
        Some(match self.stage() {
            RoundStage::MaskedInputCollection => self.round_deadline,
            _ => self.stage_deadline,
        })
    }

    fn closed_stages(&self) -> u64 {
        u64::from(self.directory.is_some())
            + u64::from(!self.deliveries.is_empty())
            + u64::from(self.consistency_check.is_some())
            + u64::from(self.unmask_request.is_some())
            + u64::from(self.is_closed())
    }

    fn has_uploaded(&self, site: &str) -> bool {
        self.ids.get(site).is_some_and(|id| self.uploaded.contains(id))
    }

    fn forget(&mut self, site: &str) -> bool {
        let Some(&id) = self.ids.get(site) else {
            return false;
        };
        // A site that has not advertised keys yet has no secrets to lose: it can still join.
        if self.is_closed() || !self.advertised.contains(&id) || self.lost.contains(&id) {
            return false;
        }
        self.lost.insert(id);
        true
    }
}
