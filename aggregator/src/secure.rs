//! Secure aggregation as the round's [`Aggregation`]: the transport and timing around the Bonawitz
//! state machine of `fedlnm_shared::secagg` (SecAggServer). The aggregator only ever holds masked
//! inputs and their sum; the decoded result is Σ n_k Δ_k and Σ n_k.
//!
//! Stages and when they close (all invited sites answered, or the deadline):
//! keys and shares: `stage_timeout_s` after the stage opened; masked inputs: the round deadline;
//! unmasking: `stage_timeout_s` after the survivors were announced. Messages are encoded by
//! `fedlnm_shared::federation::wire`; each names its study, round, configuration hash and site, and the
//! site must be the caller's certificate identity.

use crate::aggregation::{Aggregation, AggregationError, Poll, RoundAggregate, TaskFields, Upload};
use fedlnm_shared::config::AggregatorConfig;
use fedlnm_shared::federation::AggregationKind;
use fedlnm_shared::federation::wire::{decode, encode};
use fedlnm_shared::secagg::{
    self, AdvertiseKeys, KeyDirectory, MaskedInput, QuantizationConfig, RoundConfig, SecAggConfig,
    SecAggServer, ShareDelivery, ShareKeys, SiteId, Stage, UnmaskRequest, UnmaskResponse,
};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use fedlnm_shared::federation::{
    STAGE_ADVERTISE_KEYS as ADVERTISE_KEYS, STAGE_SHARE_KEYS as SHARE_KEYS,
    STAGE_UNMASK_REQUEST as UNMASK_REQUEST, STAGE_UNMASK_RESPONSE as UNMASK_RESPONSE,
};

/// One start of a round: its number, which start it is (an abandoned round starts again as a new
/// attempt, with its own protocol instance), when it opened and its upload deadline.
#[derive(Debug, Clone, Copy)]
pub struct Attempt {
    pub round: u64,
    pub attempt: u64,
    pub opened: Instant,
    pub deadline: Instant,
}

/// The secure aggregation of one round.
pub struct SecureAggregation {
    config: RoundConfig,
    config_json: String,
    server: SecAggServer,
    ids: BTreeMap<String, SiteId>,
    stage_timeout: Duration,
    stage_deadline: Instant,
    round_deadline: Instant,
    advertised: BTreeSet<SiteId>,
    shared: BTreeSet<SiteId>,
    uploaded: BTreeSet<SiteId>,
    responded: BTreeSet<SiteId>,
    directory: Option<Vec<u8>>,
    deliveries: BTreeMap<SiteId, Vec<u8>>,
    unmask_request: Option<Vec<u8>>,
    result: Option<Poll>,
    u1: Vec<SiteId>,
    u2: Vec<SiteId>,
    u3: Vec<SiteId>,
}

impl SecureAggregation {
    /// Configures one attempt of a round over the tensors of `global` for which `aggregated(name)`
    /// holds, for the training sites `sites` (sorted; site k gets protocol id k + 1), threshold
    /// `min_sites`.
    ///
    /// # Errors
    /// The protocol configuration is invalid (e.g. quantization headroom), named.
    pub fn new(
        config: &AggregatorConfig,
        attempt: &Attempt,
        global: &crate::store::ModelBlob,
        aggregated: &dyn Fn(&str) -> bool,
        sites: &[String],
    ) -> Result<Self, secagg::SecAggError> {
        let Attempt {
            round,
            attempt,
            opened: now,
            deadline: round_deadline,
        } = *attempt;
        let ids: BTreeMap<String, SiteId> = sites
            .iter()
            .enumerate()
            .map(|(k, site)| (site.clone(), SiteId(u32::try_from(k + 1).unwrap_or(u32::MAX))))
            .collect();
        let secagg_config = SecAggConfig {
            study_id: config.study.clone(),
            round,
            // The attempt makes every start of a round a distinct instance (its own configuration
            // hash): nothing from an abandoned attempt is accepted by the next.
            model_version: format!("{}#{attempt}", global.digest),
            participants: ids.values().copied().collect(),
            threshold: config.rounds.min_sites,
            tensors: secagg::tensor_specs(&global.weights),
            fedbn_exclude: global
                .weights
                .names()
                .filter(|name| !aggregated(name))
                .map(str::to_owned)
                .collect(),
            quantization: QuantizationConfig::default(),
            max_delta_norm: config.rounds.max_delta_norm,
        };
        let config_json = serde_json::to_string(&secagg_config).unwrap_or_default();
        let round_config = secagg_config.validate()?;
        let stage_timeout = Duration::from_secs(config.rounds.stage_timeout_s);
        Ok(Self {
            server: SecAggServer::new(round_config.clone()),
            config: round_config,
            config_json,
            ids,
            stage_timeout,
            stage_deadline: now + stage_timeout,
            round_deadline,
            advertised: BTreeSet::new(),
            shared: BTreeSet::new(),
            uploaded: BTreeSet::new(),
            responded: BTreeSet::new(),
            directory: None,
            deliveries: BTreeMap::new(),
            unmask_request: None,
            result: None,
            u1: Vec::new(),
            u2: Vec::new(),
            u3: Vec::new(),
        })
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

    fn name_of(&self, id: SiteId) -> String {
        self.ids
            .iter()
            .find(|(_, v)| **v == id)
            .map_or_else(|| id.to_string(), |(name, _)| name.clone())
    }

    fn fail(&mut self, reason: String) -> Poll {
        let poll = Poll::Failed(reason);
        self.result = Some(poll.clone());
        poll
    }
}

fn protocol_error(error: &secagg::SecAggError) -> AggregationError {
    AggregationError::Invalid(error.to_string())
}

impl Aggregation for SecureAggregation {
    fn kind(&self) -> AggregationKind {
        AggregationKind::Secure
    }

    fn task_fields(&self, site: &str) -> Option<TaskFields> {
        let id = *self.ids.get(site)?;
        // After the key stage a site that did not advertise cannot take part any more.
        if self.server.stage() != Stage::AdvertiseKeys && !self.u1.contains(&id) {
            return None;
        }
        if self.result.is_some() {
            return None;
        }
        Some(TaskFields {
            aggregation: "secure".to_owned(),
            secagg_config_json: self.config_json.clone(),
            secagg_site_id: id.0,
        })
    }

    fn max_upload_bytes(&self) -> u64 {
        // A MaskedInput: header (study, round, hash, site) and the vector of u64.
        (8 * self.config.vector_len() + 1024 + self.config.study_id().len()) as u64
    }

    fn accept_upload(&mut self, upload: &Upload<'_>) -> Result<(), AggregationError> {
        let id = self.id(upload.site)?;
        if upload.format != "secure" {
            return Err(AggregationError::Invalid(format!(
                "this round takes masked updates (secure aggregation), not '{}'",
                upload.format
            )));
        }
        let message: MaskedInput =
            decode(upload.payload, "masked input").map_err(AggregationError::Invalid)?;
        Self::check_sender(upload.site, id, message.header.site)?;
        self.server
            .receive_masked_input(message)
            .map_err(|e| protocol_error(&e))?;
        self.uploaded.insert(id);
        Ok(())
    }

    fn accept_message(&mut self, site: &str, stage: &str, payload: &[u8]) -> Result<(), AggregationError> {
        let id = self.id(site)?;
        match stage {
            ADVERTISE_KEYS => {
                let message: AdvertiseKeys =
                    decode(payload, "key advertisement").map_err(AggregationError::Invalid)?;
                Self::check_sender(site, id, message.header.site)?;
                self.server
                    .receive_keys(message)
                    .map_err(|e| protocol_error(&e))?;
                self.advertised.insert(id);
            }
            SHARE_KEYS => {
                let message: ShareKeys =
                    decode(payload, "encrypted shares").map_err(AggregationError::Invalid)?;
                Self::check_sender(site, id, message.header.site)?;
                self.server
                    .receive_shares(message)
                    .map_err(|e| protocol_error(&e))?;
                self.shared.insert(id);
            }
            UNMASK_RESPONSE => {
                let message: UnmaskResponse =
                    decode(payload, "unmasking shares").map_err(AggregationError::Invalid)?;
                Self::check_sender(site, id, message.header.site)?;
                self.server
                    .receive_unmask_response(message)
                    .map_err(|e| protocol_error(&e))?;
                self.responded.insert(id);
            }
            UNMASK_REQUEST => {}
            other => {
                return Err(AggregationError::Invalid(format!(
                    "unknown secure-aggregation stage '{other}'"
                )));
            }
        }
        Ok(())
    }

    fn reply(&self, site: &str, stage: &str) -> Option<Result<Vec<u8>, AggregationError>> {
        let id = match self.id(site) {
            Ok(id) => id,
            Err(error) => return Some(Err(error)),
        };
        let aborted = || {
            Some(Err(AggregationError::WrongTime(
                "the secure aggregation of this round was abandoned".to_owned(),
            )))
        };
        if matches!(self.result, Some(Poll::Failed(_))) {
            return aborted();
        }
        let left_out = |stage: &str| {
            Some(Err(AggregationError::WrongTime(format!(
                "the {stage} stage closed without site {site}; it rejoins at the next round"
            ))))
        };
        match stage {
            ADVERTISE_KEYS => match &self.directory {
                Some(_) if !self.u1.contains(&id) => left_out(stage),
                Some(directory) => Some(Ok(directory.clone())),
                None => None,
            },
            SHARE_KEYS => {
                if self.server.stage() == Stage::AdvertiseKeys || self.server.stage() == Stage::ShareKeys {
                    return None;
                }
                match self.deliveries.get(&id) {
                    Some(delivery) => Some(Ok(delivery.clone())),
                    None => left_out(stage),
                }
            }
            UNMASK_REQUEST => match &self.unmask_request {
                Some(_) if !self.u3.contains(&id) => left_out("masked-input"),
                Some(request) => Some(Ok(request.clone())),
                None => None,
            },
            UNMASK_RESPONSE => Some(Ok(Vec::new())),
            other => Some(Err(AggregationError::Invalid(format!(
                "unknown secure-aggregation stage '{other}'"
            )))),
        }
    }

    fn advance(&mut self, now: Instant) -> Poll {
        if let Some(result) = &self.result {
            return result.clone();
        }
        let n = self.ids.len();
        loop {
            match self.server.stage() {
                Stage::AdvertiseKeys => {
                    if self.advertised.len() < n && now < self.stage_deadline {
                        return Poll::Pending;
                    }
                    match self.server.close_keys() {
                        Ok(directory) => {
                            self.u1 = directory.sites.iter().map(|k| k.header.site).collect();
                            self.directory = Some(encode::<KeyDirectory>(&directory));
                            self.stage_deadline = now + self.stage_timeout;
                        }
                        Err(error) => return self.fail(format!("key stage: {error}")),
                    }
                }
                Stage::ShareKeys => {
                    if self.shared.len() < self.u1.len() && now < self.stage_deadline {
                        return Poll::Pending;
                    }
                    match self.server.close_shares() {
                        Ok(deliveries) => {
                            for delivery in deliveries {
                                self.u2 = delivery.senders.clone();
                                self.deliveries
                                    .insert(delivery.to, encode::<ShareDelivery>(&delivery));
                            }
                        }
                        Err(error) => return self.fail(format!("share stage: {error}")),
                    }
                }
                Stage::MaskedInputCollection => {
                    if self.uploaded.len() < self.u2.len() && now < self.round_deadline {
                        return Poll::Pending;
                    }
                    match self.server.close_masked_inputs() {
                        Ok(request) => {
                            self.u3 = request.survivors.clone();
                            self.unmask_request = Some(encode::<UnmaskRequest>(&request));
                            self.stage_deadline = now + self.stage_timeout;
                        }
                        Err(error) => return self.fail(format!("masked-input stage: {error}")),
                    }
                }
                Stage::Unmasking => {
                    if self.responded.len() < self.u3.len() && now < self.stage_deadline {
                        return Poll::Pending;
                    }
                    match self.server.finish() {
                        Ok(aggregate) => {
                            let contributors: Vec<String> =
                                aggregate.survivors.iter().map(|&id| self.name_of(id)).collect();
                            let dropped = self
                                .ids
                                .keys()
                                .filter(|site| !contributors.contains(site))
                                .cloned()
                                .collect();
                            let average_delta = aggregate.fedavg_delta;
                            let poll = Poll::Ready(RoundAggregate {
                                average_delta,
                                total_samples: aggregate.total_samples,
                                contributors,
                                dropped,
                            });
                            self.result = Some(poll.clone());
                            return poll;
                        }
                        Err(error) => return self.fail(format!("unmasking: {error}")),
                    }
                }
                Stage::Done | Stage::Aborted => {
                    return self.fail("the protocol instance ended without an aggregate".to_owned());
                }
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        if self.result.is_some() {
            return None;
        }
        Some(match self.server.stage() {
            Stage::MaskedInputCollection => self.round_deadline,
            _ => self.stage_deadline,
        })
    }

    fn closed_stages(&self) -> u64 {
        u64::from(self.directory.is_some())
            + u64::from(!self.deliveries.is_empty())
            + u64::from(self.unmask_request.is_some())
            + u64::from(self.result.is_some())
    }

    fn has_uploaded(&self, site: &str) -> bool {
        self.ids.get(site).is_some_and(|id| self.uploaded.contains(id))
    }
}
