//! The round logic of a study (federation.md, steps 0–6), as a synchronous state machine that the
//! gRPC service drives under one lock: who gets which task, which uploads and metrics are accepted,
//! when a round aggregates, validates and commits.
//!
//! Phases: `Training(r)` (training sites download version r − 1, train, upload; the [`Aggregation`]
//! combines the updates) → `Aggregating(r)` (the expensive end: average or unmask, apply, serialize
//! and hash the new model) → `Validating(r)` (every site scores the new model r and reports aggregate
//! metrics) → `Committing(r)` (model, record and metrics written atomically, [`RoundStore`]) →
//! `Training(r+1)` or `Finished`. A round that cannot aggregate (too few sites by the deadline, a
//! protocol failure, an invalid aggregate) is abandoned without a commit and started again. Nothing in
//! memory survives a restart: the study resumes from the last committed round.
//!
//! The two slow steps never run under the lock: a transition into `Aggregating` or `Committing` leaves
//! a [`StudyJob`] that the service takes ([`Study::take_job`]) and runs on a blocking thread, and the
//! job's result comes back through [`Study::job_done`]. Meanwhile every call is answered (sites wait).

use crate::aggregation::{Aggregation, AggregationError, PlainAggregation, RoundAggregate, Upload};
use crate::secure::{Attempt, SecureAggregation};
use crate::statistics::PoolSum;
use crate::store::{Committed, ModelBlob, RoundStore, StoreError};
use crate::telemetry::Telemetry;
use fedlnm_protocol::{RoundAggregation, Status};
use fedlnm_shared::config::{AggregatorConfig, SiteRole};
use fedlnm_shared::federation::{AggregationKind, LocalTensors, RoundRecord, SiteRoundMetrics};
use fedlnm_shared::model_config::TrainPlan;
use fedlnm_shared::secagg::{PeerVerifier, SecAggConfig, SiteId};
use fedlnm_shared::signing::StudyAuthority;
pub use finish::{JobKind, JobResult, StudyJob};
use std::collections::BTreeMap;

mod analysis;
mod exchange;
mod finish;
use analysis::Analysing;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The study cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StudyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "the state folder has no committed round and aggregator.toml names no `initial_model`: create one \
         with `fedlnm-node init-model` and set `initial_model`"
    )]
    NoInitialModel,
    #[error("cannot read the initial model {}: {source}", path.display())]
    InitialModel { path: PathBuf, source: std::io::Error },
    #[error(
        "the initial model's configuration (digest {initial}) is not the one of the committed rounds \
         ({committed}): a state folder belongs to one model"
    )]
    ConfigChanged { initial: String, committed: String },
    #[error(
        "cannot check the sites' secure-aggregation signatures with the study CA {}: {reason}",
        path.display()
    )]
    Authority { path: PathBuf, reason: String },
}

/// What a site should do next.
#[derive(Debug, Clone)]
pub enum TaskDecision {
    Wait {
        reason: String,
    },
    Train(TrainAssignment),
    Validate {
        round: u64,
        model: Arc<ModelBlob>,
        local_tensors: LocalTensors,
        /// Score with the site's own normalisation statistics (`rounds.normalisation_statistics`).
        adapt_normalisation: bool,
        /// The secure sum of the site's pool: its configuration and the site's id.
        statistics: Option<(Box<SecAggConfig>, SiteId)>,
    },
    Finished {
        rounds: u64,
        model: Arc<ModelBlob>,
    },
    /// A step of a study analysis.
    Analyse(fedlnm_shared::analysis::AnalysisRequest),
}

/// A training task.
#[derive(Debug, Clone)]
pub struct TrainAssignment {
    pub round: u64,
    pub model: Arc<ModelBlob>,
    pub plan: TrainPlan,
    pub local_tensors: LocalTensors,
    pub aggregation: RoundAggregation,
}

struct Training {
    round: u64,
    /// Counts every start of a round in this process (restarts of an abandoned round included).
    attempt: u64,
    started: Instant,
    aggregation: Box<dyn Aggregation>,
}

struct Aggregating {
    round: u64,
    attempt: u64,
    training_started: Instant,
    kind: AggregationKind,
    job: u64,
}

struct Committing {
    record: RoundRecord,
    model: Arc<ModelBlob>,
    /// The commit job in flight (0: none, waiting to retry).
    job: u64,
    /// After a failed write: when to try again (the validated round is kept in memory meanwhile).
    retry_at: Option<Instant>,
    failures: u32,
}

struct Validating {
    round: u64,
    /// The attempt of the round that trained the model (its pools' protocol instances belong to it).
    attempt: u64,
    training_started: Instant,
    aggregation_seconds: f64,
    kind: AggregationKind,
    aggregate: RoundAggregate,
    model: Arc<ModelBlob>,
    deadline: Instant,
    metrics: BTreeMap<String, SiteRoundMetrics>,
    /// The secure sums of the pools' statistics (one per role with enough sites).
    pools: Vec<PoolSum>,
}

enum Phase {
    Training(Training),
    Aggregating(Aggregating),
    Validating(Box<Validating>),
    Committing(Box<Committing>),
    /// After the last round: one of the study's analyses of clinical factors.
    Analysing(Box<Analysing>),
    Finished,
}

/// The study CA of `path`, as it checks signatures.
fn study_authority(path: &std::path::Path) -> Result<Arc<dyn PeerVerifier>, StudyError> {
    let error = |reason: String| StudyError::Authority {
        path: path.to_path_buf(),
        reason,
    };
    let pem = fedlnm_shared::files::read_regular(path).map_err(|e| error(e.to_string()))?;
    let authority = StudyAuthority::from_ca_pem(&pem).map_err(|e| error(e.to_string()))?;
    Ok(Arc::new(authority))
}

/// The state of one study.
pub struct Study {
    config: Arc<AggregatorConfig>,
    store: RoundStore,
    committed: Committed,
    phase: Phase,
    telemetry: Arc<Telemetry>,
    /// Training sites, sorted: a site's secure-aggregation id is its 1-based position.
    train_sites: Vec<String>,
    /// FedBN: decided once for the study (its `fedbn` setting and the model's layout).
    local_tensors: LocalTensors,
    attempts: u64,
    /// Random, drawn once per process: see [`fedlnm_shared::secagg::ModelVersion::instance`].
    instance: u64,
    /// The study CA, checking the sites' secure-aggregation signatures on receipt (against a
    /// malicious aggregator, `rounds.threat_model`).
    authority: Option<Arc<dyn PeerVerifier>>,
    jobs: u64,
    pending_job: Option<StudyJob>,
    /// Sites that have been told the study is finished (and given the final model's reference).
    told_finished: std::collections::BTreeSet<String>,
}

impl Study {
    /// Opens the state folder: resumes after the last committed round, or commits the initial model
    /// as round 0.
    ///
    /// # Errors
    /// [`StudyError`] naming the file or setting at fault.
    pub fn open(config: Arc<AggregatorConfig>, telemetry: Arc<Telemetry>) -> Result<Self, StudyError> {
        let store = RoundStore::open(&config.state_dir)?;
        let committed = match store.latest()? {
            Some(committed) => {
                tracing::info!(
                    round = committed.record.round,
                    digest = committed.record.model_digest,
                    "resuming after the last committed round"
                );
                committed
            }
            None => {
                let path = config.initial_model.clone().ok_or(StudyError::NoInitialModel)?;
                let bytes = std::fs::read(&path).map_err(|source| StudyError::InitialModel {
                    path: path.clone(),
                    source,
                })?;
                let model = ModelBlob::parse(0, bytes, &path)?;
                let record = RoundRecord {
                    study: config.study.clone(),
                    round: 0,
                    model_digest: model.digest.clone(),
                    model_config_digest: model.config_digest.clone(),
                    aggregation: aggregation_kind(&config),
                    contributors: Vec::new(),
                    total_samples: 0,
                    dropped: Vec::new(),
                    aggregation_seconds: 0.0,
                    round_seconds: 0.0,
                    committed_at: fedlnm_shared::clock::now_rfc3339(),
                    sites: Vec::new(),
                    pooled_train_sites: None,
                    pooled_validation_sites: None,
                    privacy: None,
                };
                store.commit(&record, &model)?;
                tracing::info!(digest = model.digest, "initial model committed as version 0");
                Committed {
                    record,
                    model: Arc::new(model),
                }
            }
        };
        if let Some(path) = &config.initial_model
            && let Ok(bytes) = std::fs::read(path)
            && let Ok(initial) = ModelBlob::parse(0, bytes, path)
            && initial.config_digest != committed.model.config_digest
        {
            return Err(StudyError::ConfigChanged {
                initial: initial.config_digest,
                committed: committed.model.config_digest.clone(),
            });
        }
        let mut train_sites: Vec<String> = config
            .sites
            .iter()
            .filter(|s| s.role == SiteRole::Train)
            .map(|s| s.id.clone())
            .collect();
        train_sites.sort();
        let local_tensors = LocalTensors::for_study(&committed.model.weights, config.rounds.fedbn);
        // The pools' statistics are secure sums whether or not the training rounds are.
        let authority = if config.rounds.threat_model.is_malicious() {
            Some(study_authority(&config.tls.ca)?)
        } else {
            None
        };
        let mut study = Self {
            config,
            store,
            committed,
            phase: Phase::Finished,
            telemetry,
            train_sites,
            local_tensors,
            attempts: 0,
            instance: rand::random(),
            authority,
            jobs: 0,
            pending_job: None,
            told_finished: std::collections::BTreeSet::new(),
        };
        for role in [SiteRole::Train, SiteRole::Validate] {
            let count = study.config.sites.iter().filter(|s| s.role == role).count();
            study
                .telemetry
                .sites
                .get_or_create(&vec![("role".to_owned(), role.to_string())])
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        study
            .telemetry
            .last_committed_round
            .set(i64::try_from(study.committed.record.round).unwrap_or(i64::MAX));
        study.start_next_round(Instant::now());
        Ok(study)
    }

    /// The last committed round's number and model digest.
    #[must_use]
    pub fn committed(&self) -> (u64, &str) {
        (self.committed.record.round, &self.committed.model.digest)
    }

    /// Where the study is, in words (the status page's headline).
    #[must_use]
    pub fn progress(&self) -> String {
        let committed = self.committed.record.round;
        match &self.phase {
            Phase::Training(training) => format!(
                "round {} of {}: training (start {}); round {committed} committed",
                training.round, self.config.rounds.rounds, training.attempt
            ),
            Phase::Aggregating(aggregating) => format!(
                "round {} of {}: aggregating the updates; round {committed} committed",
                aggregating.round, self.config.rounds.rounds
            ),
            Phase::Validating(validating) => format!(
                "round {} of {}: sites are validating the new model; round {committed} committed",
                validating.round, self.config.rounds.rounds
            ),
            Phase::Committing(committing) => format!(
                "round {} of {}: committing to disk",
                committing.record.round, self.config.rounds.rounds
            ),
            Phase::Analysing(analysing) => {
                format!("all {committed} rounds committed; {}", analysing.describe())
            }
            Phase::Finished => format!("finished: {committed} rounds committed"),
        }
    }

    #[must_use]
    pub fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::Finished)
    }

    /// `site` was told the study is finished; returns whether that made every site of the study told.
    pub fn told_finished(&mut self, site: &str) -> bool {
        let before = self.every_site_told_finished();
        self.told_finished.insert(site.to_owned());
        !before && self.every_site_told_finished()
    }

    /// Whether the study is finished and every one of its sites has been told so (with the final
    /// model's reference).
    #[must_use]
    pub fn every_site_told_finished(&self) -> bool {
        self.is_finished()
            && self
                .config
                .sites
                .iter()
                .all(|site| self.told_finished.contains(&site.id))
    }

    fn start_next_round(&mut self, now: Instant) {
        let round = self.committed.record.round + 1;
        if round > self.config.rounds.rounds {
            self.start_analyses(0, now);
            return;
        }
        let settings = &self.config.rounds;
        let global = &self.committed.model;
        let deadline = now + Duration::from_secs(settings.round_deadline_s);
        let aggregation: Box<dyn Aggregation> = if settings.secure_aggregation {
            let attempt = Attempt {
                round,
                attempt: self.attempts + 1,
                instance: self.instance,
                opened: now,
                deadline,
            };
            match SecureAggregation::new(
                &self.config,
                &attempt,
                global,
                &self.local_tensors,
                &self.train_sites,
                self.authority.clone(),
            ) {
                Ok(secure) => Box::new(secure),
                Err(error) => {
                    // The configuration was validated at load; this is a bug or a model that breaks
                    // the quantization headroom. Stop rather than fall back to plain aggregation.
                    tracing::error!(%error, "cannot configure secure aggregation; the study stops");
                    self.phase = Phase::Finished;
                    return;
                }
            }
        } else {
            let local = self.local_tensors.clone();
            let mut plain = PlainAggregation::new(
                &global.weights,
                move |name| local.is_aggregated(name),
                self.train_sites.iter().cloned(),
                settings.min_sites,
                deadline,
            );
            // Held uploads keep their receiving permits: the same memory bound holds them.
            plain.set_max_held(settings.max_concurrent_uploads);
            Box::new(plain)
        };
        tracing::info!(round, aggregation = ?aggregation.kind(), "round started");
        self.telemetry.round.set(i64::try_from(round).unwrap_or(i64::MAX));
        self.attempts += 1;
        self.phase = Phase::Training(Training {
            round,
            attempt: self.attempts,
            started: now,
            aggregation,
        });
    }

    /// The next task of `site` (already authorized, with its role).
    #[must_use]
    pub fn task_for(&self, site: &str, role: SiteRole) -> TaskDecision {
        match &self.phase {
            Phase::Finished => TaskDecision::Finished {
                rounds: self.committed.record.round,
                model: self.committed.model.clone(),
            },
            Phase::Training(training) => {
                if role != SiteRole::Train {
                    return TaskDecision::Wait {
                        reason: format!("round {} is training; validation comes next", training.round),
                    };
                }
                if training.aggregation.has_uploaded(site) {
                    return TaskDecision::Wait {
                        reason: format!(
                            "update for round {} received; waiting for the others",
                            training.round
                        ),
                    };
                }
                match training.aggregation.task_fields(site) {
                    Some(aggregation) => TaskDecision::Train(TrainAssignment {
                        round: training.round,
                        model: self.committed.model.clone(),
                        plan: self.config.plan_for_round(training.round),
                        local_tensors: self.local_tensors.clone(),
                        aggregation,
                    }),
                    None => TaskDecision::Wait {
                        reason: format!(
                            "round {} started without this site; it joins the next round",
                            training.round
                        ),
                    },
                }
            }
            Phase::Validating(validating) => {
                if validating.metrics.contains_key(site) {
                    TaskDecision::Wait {
                        reason: format!(
                            "metrics of round {} received; waiting for the others",
                            validating.round
                        ),
                    }
                } else {
                    TaskDecision::Validate {
                        round: validating.round,
                        model: validating.model.clone(),
                        local_tensors: self.local_tensors.clone(),
                        adapt_normalisation: self.config.rounds.adapts_normalisation(),
                        statistics: validating
                            .pools
                            .iter()
                            .find(|pool| pool.role() == role)
                            .and_then(|pool| pool.sum.task_fields(site)),
                    }
                }
            }
            Phase::Aggregating(aggregating) => TaskDecision::Wait {
                reason: format!("round {} is being aggregated", aggregating.round),
            },
            Phase::Committing(committing) => TaskDecision::Wait {
                reason: format!("round {} is being committed", committing.record.round),
            },
            Phase::Analysing(analysing) => match Self::analysis_task_for(analysing, site) {
                Ok(request) => TaskDecision::Analyse(request),
                Err(reason) => TaskDecision::Wait { reason },
            },
        }
    }

    /// `site` checked in: its node started afresh. A secure round it took part in goes on without it
    /// at once (its round secrets died with the old process); it rejoins at the next round.
    pub fn site_checked_in(&mut self, site: &str) {
        match &mut self.phase {
            Phase::Training(training) => {
                let forgotten = training.aggregation.forget(site);
                if forgotten {
                    tracing::warn!(
                        site,
                        round = training.round,
                        "the site restarted during the round: it is left out of this round and rejoins at the next"
                    );
                }
            }
            Phase::Validating(validating) => {
                for pool in &mut validating.pools {
                    if pool.sum.forget(site) {
                        tracing::warn!(
                            site,
                            round = validating.round,
                            "the site restarted during validation: its statistics are left out of the pooled sum"
                        );
                    }
                }
            }
            Phase::Analysing(analysing) => {
                let forgotten = analysing.forget(site);
                if forgotten {
                    tracing::warn!(
                        site,
                        "the site restarted during an analysis step: the analysis starts again without it"
                    );
                }
            }
            _ => {}
        }
    }

    /// The model of `version`: the committed one, or the one under validation.
    #[must_use]
    pub fn model(&self, version: u64) -> Option<Arc<ModelBlob>> {
        if version == self.committed.model.version {
            return Some(self.committed.model.clone());
        }
        match &self.phase {
            Phase::Validating(v) if v.model.version == version => Some(v.model.clone()),
            Phase::Committing(c) if c.model.version == version => Some(c.model.clone()),
            _ => None,
        }
    }

    fn training_round(&mut self, round: u64) -> Result<&mut Training, Status> {
        let refusal = match &self.phase {
            Phase::Training(training) if training.round == round => None,
            Phase::Training(training) => Some(format!(
                "round {round} is not open: the study is training round {}",
                training.round
            )),
            Phase::Aggregating(a) => Some(format!(
                "round {round} is not open for training: round {} is being aggregated",
                a.round
            )),
            Phase::Validating(v) => Some(format!(
                "round {round} is not open for training: round {} is being validated",
                v.round
            )),
            Phase::Committing(c) => Some(format!(
                "round {round} is not open for training: round {} is being committed",
                c.record.round
            )),
            Phase::Analysing(_) => Some(format!(
                "round {round} is not open: the rounds are over and the study's analyses are running"
            )),
            Phase::Finished => Some("the study is finished".to_owned()),
        };
        match (&mut self.phase, refusal) {
            (Phase::Training(training), None) => Ok(training),
            (_, refusal) => Err(Status::failed_precondition(refusal.unwrap_or_default())),
        }
    }

    /// The largest payload `site` may upload for `round` (checked before the upload is read).
    ///
    /// # Errors
    /// The round is not open, or the site already uploaded.
    pub fn upload_limit(&mut self, site: &str, round: u64) -> Result<u64, Status> {
        let training = self.training_round(round)?;
        if training.aggregation.has_uploaded(site) {
            return Err(Status::already_exists(format!(
                "site {site} already uploaded its update for round {round}"
            )));
        }
        Ok(training.aggregation.max_upload_bytes())
    }

    /// A complete upload.
    ///
    /// # Errors
    /// The round is not open, or the aggregation refuses the update (named reason).
    pub fn accept_upload(&mut self, round: u64, upload: &Upload<'_>) -> Result<(), Status> {
        let training = self.training_round(round)?;
        training.aggregation.accept_upload(upload).map_err(to_status)?;
        tracing::info!(
            site = upload.site,
            round,
            bytes = upload.bytes().len(),
            "update accepted"
        );
        Ok(())
    }
}

fn aggregation_kind(config: &AggregatorConfig) -> AggregationKind {
    if config.rounds.secure_aggregation {
        AggregationKind::Secure
    } else {
        AggregationKind::Plain
    }
}

fn to_status(error: AggregationError) -> Status {
    match error {
        AggregationError::Invalid(message) => Status::invalid_argument(message),
        AggregationError::WrongTime(message) => Status::failed_precondition(message),
    }
}
