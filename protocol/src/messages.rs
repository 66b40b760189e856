//! The typed messages of the protocol: what the node and the aggregator speak. Each converts to its
//! generated protobuf message in one place (`From`), and back (`TryFrom`), where an unknown enum value,
//! a missing field or a malformed payload becomes a [`ProtocolError`] naming the field.

use crate::generated as pb;
use crate::payload::{self, PayloadError};
use fedlnm_shared::analysis::{AnalysisAnswer, AnalysisRequest};
use fedlnm_shared::config::SiteRole;
use fedlnm_shared::federation::{AggregationKind, LocalTensors, SiteRoundMetrics};
use fedlnm_shared::model_config::TrainPlan;
use fedlnm_shared::secagg::{SecAggConfig, SiteId};
use std::time::Duration;

mod encoded;
pub use encoded::Encoded;

/// A message that does not follow the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("the message has no {0}")]
    Missing(&'static str),
    #[error("{field} has the unknown value {value}")]
    UnknownValue { field: &'static str, value: i32 },
    #[error(transparent)]
    Payload(#[from] PayloadError),
}

impl ProtocolError {
    /// The status a server answers a malformed request with.
    #[must_use]
    pub fn status(&self) -> tonic::Status {
        tonic::Status::invalid_argument(self.to_string())
    }
}

/// Who a request says it comes from; the server checks it against the client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub site: String,
    pub study: String,
}

impl Claim {
    #[must_use]
    pub fn new(site: String, study: String) -> Self {
        Self { site, study }
    }
}

/// A global model version: its number, the SHA-256 (hex) and size of its safetensors file, and the
/// digest of its model configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRef {
    pub version: u64,
    pub digest: String,
    pub size_bytes: u64,
    pub config_digest: String,
}

/// What a site should do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Task {
    /// Nothing now: ask again after `retry_after`.
    Wait {
        retry_after: Duration,
        reason: String,
    },
    Train(TrainTask),
    Validate(ValidateTask),
    /// The study is over: `model` is the final global model.
    Finished {
        rounds: u64,
        model: ModelRef,
    },
    /// One step of a study analysis: answer with [`AnalysisReport`].
    Analyse(AnalysisTask),
}

/// One Newton step of a study analysis.
#[derive(Debug, Clone, PartialEq)]
pub struct AnalysisTask {
    pub analysis: String,
    pub step: u32,
    pub request: AnalysisRequest,
}

/// A site's answer to one step of a study analysis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnalysisReport {
    pub claim: Claim,
    pub analysis: String,
    pub step: u32,
    pub answer: Encoded<AnalysisAnswer>,
}

/// Train round `round` from `model` and upload the delta.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainTask {
    pub round: u64,
    pub model: ModelRef,
    pub plan: TrainPlan,
    /// FedBN: tensors that stay at the site.
    pub local_tensors: LocalTensors,
    pub aggregation: RoundAggregation,
}

/// How this round's update is sent.
#[derive(Debug, Clone, PartialEq)]
pub enum RoundAggregation {
    /// The delta travels as safetensors ([`UpdateFormat::SafetensorsDelta`]).
    Plain,
    /// Masked by secure aggregation: the round's protocol configuration and this site's id.
    Secure {
        config: Box<SecAggConfig>,
        site_id: SiteId,
    },
}

impl RoundAggregation {
    #[must_use]
    pub fn kind(&self) -> AggregationKind {
        match self {
            Self::Plain => AggregationKind::Plain,
            Self::Secure { .. } => AggregationKind::Secure,
        }
    }

    /// The upload format of this aggregation.
    #[must_use]
    pub fn update_format(&self) -> UpdateFormat {
        match self {
            Self::Plain => UpdateFormat::SafetensorsDelta,
            Self::Secure { .. } => UpdateFormat::MaskedInput,
        }
    }
}

/// Score `model` on the site's validation patients and report the metrics of round `round`.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidateTask {
    pub round: u64,
    pub model: ModelRef,
    pub local_tensors: LocalTensors,
    /// Re-estimate the model's batch-normalisation statistics on the site's own validation patients'
    /// pictures before scoring (AdaBN; `rounds.normalisation_statistics = "site"`). A site with
    /// normalisation layers of its own (FedBN's `local_tensors`) scores with those instead.
    pub adapt_normalisation: bool,
    /// The secure sum of the statistics of the site's pool: its configuration
    /// ([`fedlnm_shared::secagg::InputKind::Counts`]) and this site's id; `None` when the site is in
    /// no pool (fewer sites of its role than the threshold).
    pub statistics: Option<(Box<SecAggConfig>, SiteId)>,
}

/// The content of an upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateFormat {
    /// A safetensors file of the delta tensors (plain aggregation).
    SafetensorsDelta,
    /// A masked input of the secure-aggregation protocol.
    MaskedInput,
}

/// The header of an upload (its first chunk).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateHeader {
    pub claim: Claim,
    pub round: u64,
    pub format: UpdateFormat,
    /// Patients the site trained on (plain only: secure aggregation masks it inside the payload).
    pub n_samples: u64,
    pub total_size: u64,
    /// SHA-256 (hex) of the whole payload.
    pub digest: String,
}

/// The stages of the secure-aggregation protocol that a site sends a message for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SecAggStage {
    AdvertiseKeys,
    ShareKeys,
    /// No payload: waits for the survivors (honest-but-curious aggregator).
    UnmaskRequest,
    /// No payload: waits for the survivor set to sign (malicious aggregator, round 3).
    ConsistencyCheck,
    /// The site's signature of the survivor set; the reply is the unmasking request.
    ConsistencySignature,
    /// The last stage: its reply is empty.
    UnmaskResponse,
}

impl SecAggStage {
    /// The stage's name in logs and error messages.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::AdvertiseKeys => "advertise-keys",
            Self::ShareKeys => "share-keys",
            Self::UnmaskRequest => "unmask-request",
            Self::ConsistencyCheck => "consistency-check",
            Self::ConsistencySignature => "consistency-signature",
            Self::UnmaskResponse => "unmask-response",
        }
    }
}

impl std::fmt::Display for SecAggStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One secure-aggregation message of a site (payload: the stage's protocol message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecAggMessage {
    pub claim: Claim,
    pub round: u64,
    pub stage: SecAggStage,
    pub payload: Vec<u8>,
}

/// A site's aggregate validation metrics of a global model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsReport {
    pub claim: Claim,
    pub round: u64,
    /// The digest of the model that was scored.
    pub model_digest: String,
    pub metrics: Encoded<SiteRoundMetrics>,
    /// The site's masked input of its pool's secure sum (payload of a
    /// [`fedlnm_shared::secagg::MaskedInput`]); empty outside a pool.
    pub masked_statistics: Vec<u8>,
}

/// A site's check-in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckIn {
    pub claim: Claim,
    pub node_version: String,
}

/// The aggregator's answer to a check-in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckInReply {
    pub study: String,
    pub site: String,
    pub role: SiteRole,
    pub aggregator_version: String,
}

/// The aggregator's receipt of an upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadReceipt {
    pub round: u64,
    pub bytes: u64,
}

// ---- Conversions to and from the generated messages (the only place that names both). ----

fn required<T>(value: Option<T>, field: &'static str) -> Result<T, ProtocolError> {
    value.ok_or(ProtocolError::Missing(field))
}

fn known<T: TryFrom<i32>>(value: i32, field: &'static str) -> Result<T, ProtocolError> {
    T::try_from(value).map_err(|_| ProtocolError::UnknownValue { field, value })
}

/// A typed enum and its generated twin, converted both ways; the generated `Unspecified` (a field the
/// sender left unset) is refused as missing.
macro_rules! wire_enum {
    ($typed:ty, $generated:ty, $field:literal, $parse:ident, { $($variant:ident => $wire:ident),+ $(,)? }) => {
        impl From<$typed> for $generated {
            fn from(value: $typed) -> Self {
                match value {
                    $(<$typed>::$variant => Self::$wire,)+
                }
            }
        }

        fn $parse(value: i32) -> Result<$typed, ProtocolError> {
            match known::<$generated>(value, $field)? {
                $(<$generated>::$wire => Ok(<$typed>::$variant),)+
                <$generated>::Unspecified => Err(ProtocolError::Missing($field)),
            }
        }
    };
}

wire_enum!(SiteRole, pb::SiteRole, "role", site_role, {
    Train => Train,
    Validate => Validate,
});
wire_enum!(UpdateFormat, pb::UpdateFormat, "format", update_format, {
    SafetensorsDelta => SafetensorsDelta,
    MaskedInput => MaskedInput,
});
wire_enum!(SecAggStage, pb::SecAggStage, "stage", sec_agg_stage, {
    AdvertiseKeys => AdvertiseKeys,
    ShareKeys => ShareKeys,
    UnmaskRequest => UnmaskRequest,
    ConsistencyCheck => ConsistencyCheck,
    ConsistencySignature => ConsistencySignature,
    UnmaskResponse => UnmaskResponse,
});
wire_enum!(AggregationKind, pb::AggregationKind, "aggregation", aggregation_kind, {
    Plain => Plain,
    Secure => Secure,
});

impl From<ModelRef> for pb::ModelRef {
    fn from(model: ModelRef) -> Self {
        Self {
            version: model.version,
            digest: model.digest,
            size_bytes: model.size_bytes,
            config_digest: model.config_digest,
        }
    }
}

impl From<pb::ModelRef> for ModelRef {
    fn from(model: pb::ModelRef) -> Self {
        Self {
            version: model.version,
            digest: model.digest,
            size_bytes: model.size_bytes,
            config_digest: model.config_digest,
        }
    }
}

fn model_ref(model: Option<pb::ModelRef>) -> Result<ModelRef, ProtocolError> {
    required(model, "model").map(ModelRef::from)
}

impl From<Task> for pb::Task {
    fn from(task: Task) -> Self {
        use pb::task::Kind;
        let kind = match task {
            Task::Wait { retry_after, reason } => Kind::Wait(pb::Wait {
                retry_after_ms: u32::try_from(retry_after.as_millis()).unwrap_or(u32::MAX),
                reason,
            }),
            Task::Train(train) => {
                let (secagg_config, secagg_site_id) = match &train.aggregation {
                    RoundAggregation::Plain => (Vec::new(), 0),
                    RoundAggregation::Secure { config, site_id } => (payload::encode(config), site_id.0),
                };
                Kind::Train(pb::TrainTask {
                    round: train.round,
                    model: Some(train.model.into()),
                    plan: payload::encode(&train.plan),
                    local_tensors: train.local_tensors.into_names(),
                    aggregation: pb::AggregationKind::from(train.aggregation.kind()).into(),
                    secagg_config,
                    secagg_site_id,
                })
            }
            Task::Validate(validate) => {
                let (statistics_config, statistics_site_id) = match &validate.statistics {
                    None => (Vec::new(), 0),
                    Some((config, site_id)) => (payload::encode(config), site_id.0),
                };
                Kind::Validate(pb::ValidateTask {
                    round: validate.round,
                    model: Some(validate.model.into()),
                    local_tensors: validate.local_tensors.into_names(),
                    statistics_config,
                    statistics_site_id,
                    adapt_normalisation: validate.adapt_normalisation,
                })
            }
            Task::Finished { rounds, model } => Kind::Finished(pb::StudyFinished {
                rounds,
                model: Some(model.into()),
            }),
            Task::Analyse(task) => Kind::Analysis(pb::AnalysisTask {
                analysis: task.analysis,
                step: task.step,
                request: payload::encode(&task.request),
            }),
        };
        Self { kind: Some(kind) }
    }
}

impl TryFrom<pb::Task> for Task {
    type Error = ProtocolError;

    fn try_from(task: pb::Task) -> Result<Self, ProtocolError> {
        use pb::task::Kind;
        Ok(match required(task.kind, "task")? {
            Kind::Wait(wait) => Self::Wait {
                retry_after: Duration::from_millis(u64::from(wait.retry_after_ms)),
                reason: wait.reason,
            },
            Kind::Train(train) => {
                let aggregation = match aggregation_kind(train.aggregation)? {
                    AggregationKind::Plain => RoundAggregation::Plain,
                    AggregationKind::Secure => RoundAggregation::Secure {
                        config: Box::new(payload::decode(
                            &train.secagg_config,
                            "secure-aggregation configuration",
                        )?),
                        site_id: SiteId(train.secagg_site_id),
                    },
                };
                Self::Train(TrainTask {
                    round: train.round,
                    model: model_ref(train.model)?,
                    plan: payload::decode(&train.plan, "training plan")?,
                    local_tensors: LocalTensors::from_names(train.local_tensors),
                    aggregation,
                })
            }
            Kind::Validate(validate) => Self::Validate(ValidateTask {
                round: validate.round,
                model: model_ref(validate.model)?,
                local_tensors: LocalTensors::from_names(validate.local_tensors),
                adapt_normalisation: validate.adapt_normalisation,
                statistics: if validate.statistics_config.is_empty() {
                    None
                } else {
                    Some((
                        Box::new(payload::decode(
                            &validate.statistics_config,
                            "statistics secure-sum configuration",
                        )?),
                        SiteId(validate.statistics_site_id),
                    ))
                },
            }),
            Kind::Finished(finished) => Self::Finished {
                rounds: finished.rounds,
                model: model_ref(finished.model)?,
            },
            Kind::Analysis(task) => Self::Analyse(AnalysisTask {
                analysis: task.analysis,
                step: task.step,
                request: payload::decode(&task.request, "analysis request")?,
            }),
        })
    }
}

impl From<UpdateHeader> for pb::UpdateHeader {
    fn from(header: UpdateHeader) -> Self {
        Self {
            site: header.claim.site,
            study: header.claim.study,
            round: header.round,
            format: pb::UpdateFormat::from(header.format).into(),
            n_samples: header.n_samples,
            total_size: header.total_size,
            digest: header.digest,
        }
    }
}

impl TryFrom<pb::UpdateHeader> for UpdateHeader {
    type Error = ProtocolError;

    fn try_from(header: pb::UpdateHeader) -> Result<Self, ProtocolError> {
        Ok(Self {
            format: update_format(header.format)?,
            claim: Claim::new(header.site, header.study),
            round: header.round,
            n_samples: header.n_samples,
            total_size: header.total_size,
            digest: header.digest,
        })
    }
}

impl From<SecAggMessage> for pb::SecAggRequest {
    fn from(message: SecAggMessage) -> Self {
        Self {
            site: message.claim.site,
            study: message.claim.study,
            round: message.round,
            stage: pb::SecAggStage::from(message.stage).into(),
            payload: message.payload,
        }
    }
}

impl TryFrom<pb::SecAggRequest> for SecAggMessage {
    type Error = ProtocolError;

    fn try_from(request: pb::SecAggRequest) -> Result<Self, ProtocolError> {
        Ok(Self {
            stage: sec_agg_stage(request.stage)?,
            claim: Claim::new(request.site, request.study),
            round: request.round,
            payload: request.payload,
        })
    }
}

impl From<MetricsReport> for pb::MetricsReport {
    fn from(report: MetricsReport) -> Self {
        Self {
            site: report.claim.site,
            study: report.claim.study,
            round: report.round,
            model_digest: report.model_digest,
            metrics: report.metrics.into_bytes(),
            masked_statistics: report.masked_statistics,
        }
    }
}

impl From<pb::MetricsReport> for MetricsReport {
    fn from(report: pb::MetricsReport) -> Self {
        Self {
            claim: Claim::new(report.site, report.study),
            round: report.round,
            model_digest: report.model_digest,
            metrics: Encoded::from_bytes(report.metrics, "validation metrics"),
            masked_statistics: report.masked_statistics,
        }
    }
}

impl From<AnalysisReport> for pb::AnalysisReport {
    fn from(report: AnalysisReport) -> Self {
        Self {
            site: report.claim.site,
            study: report.claim.study,
            analysis: report.analysis,
            step: report.step,
            answer: report.answer.into_bytes(),
        }
    }
}

impl From<pb::AnalysisReport> for AnalysisReport {
    fn from(report: pb::AnalysisReport) -> Self {
        Self {
            claim: Claim::new(report.site, report.study),
            analysis: report.analysis,
            step: report.step,
            answer: Encoded::from_bytes(report.answer, "analysis answer"),
        }
    }
}

impl From<CheckInReply> for pb::CheckInResponse {
    fn from(reply: CheckInReply) -> Self {
        Self {
            study: reply.study,
            site: reply.site,
            role: pb::SiteRole::from(reply.role).into(),
            aggregator_version: reply.aggregator_version,
            protocol_revision: crate::PROTOCOL_REVISION,
        }
    }
}

impl TryFrom<pb::CheckInResponse> for CheckInReply {
    type Error = ProtocolError;

    fn try_from(reply: pb::CheckInResponse) -> Result<Self, ProtocolError> {
        Ok(Self {
            role: site_role(reply.role)?,
            study: reply.study,
            site: reply.site,
            aggregator_version: reply.aggregator_version,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn model() -> ModelRef {
        ModelRef {
            version: 3,
            digest: "ab".repeat(32),
            size_bytes: 1234,
            config_digest: "cd".repeat(32),
        }
    }

    #[test]
    fn tasks_survive_the_wire_unchanged() {
        let tasks = [
            Task::Wait {
                retry_after: Duration::from_millis(500),
                reason: "waiting".into(),
            },
            Task::Train(TrainTask {
                round: 4,
                model: model(),
                plan: TrainPlan::default(),
                local_tensors: LocalTensors::from_names(vec!["image.bn1.gamma".into()]),
                aggregation: RoundAggregation::Plain,
            }),
            Task::Validate(ValidateTask {
                round: 4,
                model: model(),
                local_tensors: LocalTensors::default(),
                adapt_normalisation: true,
                statistics: None,
            }),
            Task::Validate(ValidateTask {
                round: 4,
                model: model(),
                local_tensors: LocalTensors::default(),
                adapt_normalisation: false,
                statistics: Some((
                    Box::new(SecAggConfig {
                        study_id: "study".into(),
                        round: 4,
                        model_version: fedlnm_shared::secagg::ModelVersion::new("ab", 1),
                        participants: vec![SiteId(1), SiteId(2)],
                        threshold: 2,
                        tensors: vec![fedlnm_shared::secagg::TensorSpec {
                            name: "score_histogram.positive".into(),
                            shape: vec![3],
                        }],
                        fedbn_exclude: Vec::new(),
                        quantization: fedlnm_shared::secagg::QuantizationConfig::default(),
                        max_delta_norm: 1.0,
                        input: fedlnm_shared::secagg::InputKind::Counts,
                        privacy: None,
                        security: fedlnm_shared::secagg::Security::MaliciousServer {
                            identities: [(SiteId(1), "S1".to_owned()), (SiteId(2), "S2".to_owned())].into(),
                        },
                        graph: fedlnm_shared::secagg::Graph::Harary {
                            degree: 2,
                            dropout_fraction: 0.0,
                            corrupt_fraction: 0.0,
                        },
                    }),
                    SiteId(2),
                )),
            }),
            Task::Finished {
                rounds: 8,
                model: model(),
            },
            Task::Analyse(AnalysisTask {
                analysis: "clinical-factors".into(),
                step: 2,
                request: AnalysisRequest {
                    analysis: fedlnm_shared::analysis::AnalysisConfig {
                        name: "clinical-factors".into(),
                        outcome: fedlnm_shared::analysis::Outcome::Lnm,
                        terms: vec!["male".into()],
                        reference: std::collections::BTreeMap::new(),
                        min_site_rows: 10,
                        max_iterations: 25,
                    },
                    step: 2,
                    fits: vec![fedlnm_shared::analysis::FitRequest {
                        terms: vec!["male".into()],
                        beta: vec![-0.5, 0.25],
                    }],
                    sum: None,
                },
            }),
        ];
        for task in tasks {
            let wire = pb::Task::from(task.clone());
            assert_eq!(Task::try_from(wire).unwrap(), task);
        }
    }

    #[test]
    fn unknown_enum_values_and_missing_fields_are_named() {
        let mut wire = pb::Task::from(Task::Train(TrainTask {
            round: 1,
            model: model(),
            plan: TrainPlan::default(),
            local_tensors: LocalTensors::default(),
            aggregation: RoundAggregation::Plain,
        }));
        if let Some(pb::task::Kind::Train(train)) = &mut wire.kind {
            train.aggregation = 9;
        }
        assert_eq!(
            Task::try_from(wire.clone()).unwrap_err(),
            ProtocolError::UnknownValue {
                field: "aggregation",
                value: 9
            }
        );
        if let Some(pb::task::Kind::Train(train)) = &mut wire.kind {
            train.aggregation = pb::AggregationKind::Plain.into();
            train.plan.truncate(3);
        }
        let error = Task::try_from(wire).unwrap_err().to_string();
        assert!(error.contains("training plan"), "{error}");
        assert_eq!(
            Task::try_from(pb::Task { kind: None }).unwrap_err(),
            ProtocolError::Missing("task")
        );
        let header = pb::UpdateHeader::default();
        assert_eq!(
            UpdateHeader::try_from(header).unwrap_err(),
            ProtocolError::Missing("format")
        );
    }
}
