//! The aggregator's gRPC service over mutual TLS: every call is authorized by the site id in the client
//! certificate (chain-verified against the study CA by rustls), checked against the study config, then
//! handed to the round logic ([`Study`]) under one lock, which is held only for quick state changes: the
//! slow steps of a round (unmasking, applying, serializing and hashing a model, committing it) run on
//! blocking threads ([`Study::take_job`]) while every call is still answered.
//!
//! Refusals are logged with the site and reason, counted in `/metrics`, change no state, and reach the
//! node as a gRPC status that says what to fix. Long polls (`GetTask`, secure-aggregation stages) wait
//! on a change notification, never by spinning. Transfers stream in chunks of about 1 MiB with a
//! per-chunk idle timeout, so a slow link that keeps making progress is never cut off.

use crate::aggregation::Upload;
use crate::store::ModelBlob;
use crate::study::{JobKind, Study, StudyError, StudyJob, TaskDecision};
use crate::telemetry::Telemetry;
use fedlnm_protocol::server::{self as wire, Caller, Download, FederationHandler, IncomingUpload};
use fedlnm_protocol::{
    AnalysisReport, AnalysisTask, CheckIn, CheckInReply, Claim, MetricsReport, ModelRef, SecAggMessage,
    SecAggStage, Status, Task, TrainTask, UpdateFormat, UploadReceipt, ValidateTask,
};
use fedlnm_shared::config::{AggregatorConfig, SiteRole};
use fedlnm_shared::federation::SiteRoundMetrics;
use fedlnm_shared::weights::scan::FiniteScan;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use upload::{Received, refusal_label};

/// How long a `Wait` tells a site to pause before asking again.
mod serve;
mod status;
mod upload;
pub use serve::serve;

const RETRY_AFTER: Duration = Duration::from_millis(500);

/// What can stop the server from starting or serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Study(#[from] StudyError),
    #[error(transparent)]
    Wire(#[from] wire::ServeError),
    #[error("cannot serve /metrics on {address}: {source}")]
    Metrics { address: String, source: std::io::Error },
}

/// Called on the blocking thread at the start of each slow study step, before its work: for
/// instrumentation, and for tests that must observe what the service answers meanwhile.
pub type JobObserver = Arc<dyn Fn(JobKind) + Send + Sync>;

struct Shared {
    config: Arc<AggregatorConfig>,
    study: Mutex<Study>,
    changed: watch::Sender<u64>,
    telemetry: Arc<Telemetry>,
    job_observer: Mutex<Option<JobObserver>>,
    /// Uploads in memory (`rounds.max_concurrent_uploads`): being received, or complete and held by the
    /// round until summed (the permit travels with the bytes). Peak memory is this many
    /// updates, whatever the number of sites.
    uploads: Arc<tokio::sync::Semaphore>,
    /// Where `/metrics` is served, once bound (`metrics_listen` may name port 0).
    metrics_address: Mutex<Option<std::net::SocketAddr>>,
}

/// The federation service of one study.
#[derive(Clone)]
pub struct FederationService {
    shared: Arc<Shared>,
}

impl FederationService {
    /// Opens the study's state (resuming after the last committed round).
    ///
    /// # Errors
    /// [`StudyError`] naming the file or setting at fault.
    pub fn open(config: AggregatorConfig) -> Result<Self, StudyError> {
        let config = Arc::new(config);
        let telemetry = Arc::new(Telemetry::default());
        let study = Study::open(config.clone(), telemetry.clone())?;
        let (changed, _) = watch::channel(0);
        let uploads = Arc::new(tokio::sync::Semaphore::new(config.rounds.max_concurrent_uploads));
        Ok(Self {
            shared: Arc::new(Shared {
                config,
                study: Mutex::new(study),
                changed,
                telemetry,
                job_observer: Mutex::new(None),
                uploads,
                metrics_address: Mutex::new(None),
            }),
        })
    }

    /// Resolves once the study is finished and every site has been told so, with the final model's
    /// reference (`serve --exit-when-finished` stops a grace period later, for the last downloads).
    pub async fn every_site_finished(&self) {
        let mut changes = self.shared.changed.subscribe();
        while !self.lock().every_site_told_finished() {
            if changes.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// The address `/metrics` is served on, once `serve` has bound it.
    #[must_use]
    pub fn metrics_address(&self) -> Option<std::net::SocketAddr> {
        *self
            .shared
            .metrics_address
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The metrics of this service.
    #[must_use]
    pub fn telemetry(&self) -> Arc<Telemetry> {
        self.shared.telemetry.clone()
    }

    fn lock(&self) -> MutexGuard<'_, Study> {
        // A panic while holding the lock is a bug; the state itself is still consistent (every
        // mutation validates before it changes anything), so keep serving.
        self.shared
            .study
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sets the [`JobObserver`] of the study's slow steps.
    pub fn observe_jobs(&self, observer: JobObserver) {
        *self
            .shared
            .job_observer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(observer);
    }

    /// Runs `f` on the study, then lets it move on (closing complete stages), starts the slow step a
    /// transition left, and wakes waiters.
    fn mutate<R>(&self, f: impl FnOnce(&mut Study) -> R) -> R {
        let (result, job) = {
            let mut study = self.lock();
            let result = f(&mut study);
            while study.tick(Instant::now()) {}
            (result, study.take_job())
        };
        self.shared.changed.send_modify(|n| *n += 1);
        if let Some(job) = job {
            self.run_job(job);
        }
        result
    }

    /// Closes whatever is past its deadline; returns the next deadline.
    fn tick(&self) -> Option<Instant> {
        let mut changed = false;
        let (next, job) = {
            let mut study = self.lock();
            while study.tick(Instant::now()) {
                changed = true;
            }
            (study.next_deadline(), study.take_job())
        };
        if changed {
            self.shared.changed.send_modify(|n| *n += 1);
        }
        if let Some(job) = job {
            self.run_job(job);
        }
        next
    }

    /// Runs a slow step on a blocking thread, never under the lock, and hands its result back.
    fn run_job(&self, job: StudyJob) {
        let service = self.clone();
        let observer = self
            .shared
            .job_observer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        tokio::spawn(async move {
            let kind = job.kind;
            let started = Instant::now();
            let outcome = tokio::task::spawn_blocking(move || {
                if let Some(observer) = observer {
                    observer(kind);
                }
                job.run()
            })
            .await;
            match outcome {
                Ok(result) => {
                    tracing::debug!(
                        ?kind,
                        seconds = started.elapsed().as_secs_f64(),
                        "study step done"
                    );
                    service.mutate(|study| study.job_done(result, Instant::now()));
                }
                // A panic in a job is a bug; the phase stays until the process restarts and resumes
                // from the last committed round.
                Err(error) => tracing::error!(?kind, %error, "a study step failed"),
            }
        });
    }

    /// Whether the study has run all its rounds.
    #[must_use]
    pub fn is_finished(&self) -> bool {
        self.lock().is_finished()
    }

    /// The last committed round and its model digest.
    #[must_use]
    pub fn committed(&self) -> (u64, String) {
        let study = self.lock();
        let (round, digest) = study.committed();
        (round, digest.to_owned())
    }

    /// Resolves when the study has run all its rounds.
    pub async fn finished(&self) {
        let mut changes = self.shared.changed.subscribe();
        while !self.is_finished() {
            if changes.changed().await.is_err() {
                return;
            }
        }
    }

    /// Waits until `ready` gives an answer, the study changes, or `limit` passes (then `None`).
    async fn wait_for<T>(&self, limit: Duration, mut ready: impl FnMut(&Study) -> Option<T>) -> Option<T> {
        let until = tokio::time::Instant::now() + limit;
        let mut changes = self.shared.changed.subscribe();
        loop {
            if let Some(answer) = ready(&self.lock()) {
                return Some(answer);
            }
            match tokio::time::timeout_at(until, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return ready(&self.lock()),
            }
        }
    }

    /// The calling site and its role, from the client certificate; checks that the request speaks for
    /// that site and study.
    fn authorize(&self, caller: Caller, claim: &Claim) -> Result<(String, SiteRole), Status> {
        let (claimed_site, claimed_study) = (claim.site.as_str(), claim.study.as_str());
        let config = &self.shared.config;
        let telemetry = &self.shared.telemetry;
        let Some(site) = caller.certificate_site else {
            tracing::warn!("refused: no usable client certificate");
            telemetry.refuse("no-certificate");
            return Err(Status::unauthenticated(
                "no client certificate naming a site was presented",
            ));
        };
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        if let Some(not_after) = caller.certificate_not_after
            && now > not_after
        {
            let expired = time::OffsetDateTime::from_unix_timestamp(not_after)
                .ok()
                .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
                .unwrap_or_else(|| not_after.to_string());
            tracing::warn!(site, expired, "refused: the site's certificate has expired");
            telemetry.refuse("certificate-expired");
            return Err(Status::unauthenticated(format!(
                "the certificate of site '{site}' expired at {expired}: the study team issues a new one \
                 with `fedlnm-aggregator renew-site`"
            )));
        }
        let Some(role) = config.role_of(&site) else {
            tracing::warn!(site, "refused: site not in the study");
            telemetry.refuse("unknown-site");
            return Err(Status::permission_denied(format!(
                "site '{site}' is not part of study '{}'",
                config.study
            )));
        };
        if claimed_site != site {
            tracing::warn!(site, claimed_site, "refused: request speaks for another site");
            telemetry.refuse("impersonation");
            return Err(Status::permission_denied(format!(
                "the certificate is for site '{site}' but the request speaks for site '{claimed_site}'"
            )));
        }
        if claimed_study != config.study {
            tracing::warn!(site, claimed_study, "refused: wrong study");
            telemetry.refuse("wrong-study");
            return Err(Status::failed_precondition(format!(
                "this aggregator runs study '{}', not '{claimed_study}': check the node's configuration",
                config.study
            )));
        }
        telemetry.seen(&site);
        Ok((site, role))
    }

    fn require_training_site(&self, site: &str, role: SiteRole) -> Result<(), Status> {
        if role == SiteRole::Train {
            return Ok(());
        }
        tracing::warn!(site, "refused: a validate-only site sent a training message");
        self.shared.telemetry.refuse("validate-site-training");
        Err(Status::permission_denied(format!(
            "site '{site}' is a validation site: it never trains or submits training updates"
        )))
    }
}

fn model_ref(model: &ModelBlob) -> ModelRef {
    ModelRef {
        version: model.version,
        digest: model.digest.clone(),
        size_bytes: model.bytes.len() as u64,
        config_digest: model.config_digest.clone(),
    }
}

fn task_message(decision: TaskDecision) -> Task {
    match decision {
        TaskDecision::Wait { reason } => Task::Wait {
            retry_after: RETRY_AFTER,
            reason,
        },
        TaskDecision::Train(assignment) => Task::Train(TrainTask {
            round: assignment.round,
            model: model_ref(&assignment.model),
            plan: assignment.plan,
            local_tensors: assignment.local_tensors,
            aggregation: assignment.aggregation,
        }),
        TaskDecision::Validate {
            round,
            model,
            local_tensors,
            adapt_normalisation,
            statistics,
        } => Task::Validate(ValidateTask {
            round,
            model: model_ref(&model),
            local_tensors,
            adapt_normalisation,
            statistics,
        }),
        TaskDecision::Finished { rounds, model } => Task::Finished {
            rounds,
            model: model_ref(&model),
        },
        TaskDecision::Analyse(request) => Task::Analyse(AnalysisTask {
            analysis: request.analysis.name.clone(),
            step: request.step,
            request,
        }),
    }
}

impl Download for ModelBlob {
    fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    fn digest(&self) -> &str {
        &self.digest
    }
}

#[fedlnm_protocol::server::async_trait]
impl FederationHandler for FederationService {
    async fn check_in(&self, caller: Caller, request: CheckIn) -> Result<CheckInReply, Status> {
        let (site, role) = self.authorize(caller, &request.claim)?;
        tracing::info!(site, %role, node_version = request.node_version, "site checked in");
        self.mutate(|study| study.site_checked_in(&site));
        Ok(CheckInReply {
            study: self.shared.config.study.clone(),
            site,
            role,
            aggregator_version: env!("CARGO_PKG_VERSION").to_owned(),
        })
    }

    async fn get_task(&self, caller: Caller, claim: Claim) -> Result<Task, Status> {
        let (site, role) = self.authorize(caller, &claim)?;
        let long_poll = Duration::from_secs(self.shared.config.rounds.long_poll_s);
        let decision = self
            .wait_for(long_poll, |study| match study.task_for(&site, role) {
                TaskDecision::Wait { .. } => None,
                decision => Some(decision),
            })
            .await
            .unwrap_or_else(|| self.lock().task_for(&site, role));
        if matches!(decision, TaskDecision::Finished { .. })
            && self.mutate(|study| study.told_finished(&site))
        {
            tracing::info!("study finished: every site has been sent the final model");
        }
        Ok(task_message(decision))
    }

    async fn download_model(
        &self,
        caller: Caller,
        claim: Claim,
        version: u64,
    ) -> Result<Arc<dyn Download>, Status> {
        let (site, _) = self.authorize(caller, &claim)?;
        let model = self.lock().model(version).ok_or_else(|| {
            Status::not_found(format!(
                "model version {version} is not available (only the committed and the validated one are)"
            ))
        })?;
        tracing::debug!(
            site,
            version = model.version,
            bytes = model.bytes.len(),
            "model download"
        );
        self.shared.telemetry.sent("model", model.bytes.len());
        Ok(model)
    }

    async fn upload_update(&self, caller: Caller, upload: IncomingUpload) -> Result<UploadReceipt, Status> {
        let header = upload.header.clone();
        let (site, role) = self.authorize(caller, &header.claim)?;
        self.require_training_site(&site, role)?;
        self.mutate(|study| study.upload_limit(&site, header.round))?;
        // Wait for a turn before reading the update (its sender is held back meanwhile), then check
        // again: the round may have moved on while this site waited.
        let turn = Arc::clone(&self.shared.uploads)
            .acquire_owned()
            .await
            .map_err(|_| Status::unavailable("the aggregator is stopping"))?;
        let limit = self.mutate(|study| study.upload_limit(&site, header.round))?;
        let idle = Duration::from_secs(self.shared.config.rounds.transfer_idle_s);
        // A plain update's values are checked chunk by chunk as they arrive (still in the cache),
        // instead of being read again from memory when the round takes the update.
        let mut scan = (header.format == UpdateFormat::SafetensorsDelta).then(FiniteScan::new);
        let inspect = |chunk: &[u8]| {
            if let Some(scan) = &mut scan {
                scan.update(chunk);
            }
        };
        let payload = upload
            .receive_inspecting(limit, idle, inspect)
            .await
            .map_err(|error| {
                tracing::warn!(site, round = header.round, %error, "refused: upload");
                self.shared.telemetry.refuse(refusal_label(&error));
                error.status()
            })?;
        self.shared.telemetry.received("update", payload.len());
        let bytes = payload.len() as u64;
        let upload = Upload {
            site: &site,
            format: header.format,
            n_samples: header.n_samples,
            payload: Arc::new(Received {
                bytes: payload,
                _turn: turn,
            }),
            scan: scan.as_ref().map(FiniteScan::finish),
        };
        self.mutate(|study| study.accept_upload(header.round, &upload))
            .inspect_err(|status| {
                tracing::warn!(
                    site,
                    round = header.round,
                    reason = status.message(),
                    "update refused"
                );
                self.shared.telemetry.refuse("update-refused");
            })?;
        drop(upload);
        Ok(UploadReceipt {
            round: header.round,
            bytes,
        })
    }

    async fn secure_aggregation(&self, caller: Caller, message: SecAggMessage) -> Result<Vec<u8>, Status> {
        let (site, role) = self.authorize(caller, &message.claim)?;
        // Validate-only sites take part in the secure sums of statistics (their pool's, an analysis
        // step's), never in training.
        if !self.lock().sums_statistics(message.round) {
            self.require_training_site(&site, role)?;
        }
        self.shared
            .telemetry
            .received("secure-aggregation", message.payload.len());
        let stage = message.stage;
        let attempt = self
            .mutate(|study| study.accept_message(&site, message.round, stage, &message.payload))
            .inspect_err(|status| {
                tracing::warn!(
                    site,
                    %stage,
                    reason = status.message(),
                    "protocol message refused"
                );
                self.shared.telemetry.refuse("secure-aggregation-message");
            })?;
        // The last stage has no reply: accepting the shares is the answer (and the round may already
        // have moved on to aggregation because of them).
        if stage == SecAggStage::UnmaskResponse {
            return Ok(Vec::new());
        }
        let limit = Duration::from_secs(
            self.shared.config.rounds.round_deadline_s + 2 * self.shared.config.rounds.stage_timeout_s,
        );
        let reply = self
            .wait_for(limit, |study| study.reply(&site, message.round, attempt, stage))
            .await
            .unwrap_or_else(|| Err(Status::deadline_exceeded("the stage did not close in time")))?;
        self.shared.telemetry.sent("secure-aggregation", reply.len());
        Ok(reply)
    }

    fn handshake_refused(&self, _peer: std::net::SocketAddr, reason: &'static str) {
        self.shared.telemetry.refuse(reason);
    }

    fn revision_refused(&self, _site: &str, _revision: u32) {
        self.shared.telemetry.refuse("protocol-revision");
    }

    async fn report_metrics(&self, caller: Caller, report: MetricsReport) -> Result<(), Status> {
        let (site, role) = self.authorize(caller, &report.claim)?;
        let metrics: SiteRoundMetrics = report
            .metrics
            .decode()
            .map_err(|e| Status::invalid_argument(format!("malformed metrics of site {site}: {e}")))?;
        self.shared.telemetry.received("metrics", report.metrics.len());
        if !report.masked_statistics.is_empty() {
            self.shared
                .telemetry
                .received("masked-statistics", report.masked_statistics.len());
        }
        self.mutate(|study| {
            study.accept_metrics(
                &site,
                role,
                report.round,
                &report.model_digest,
                metrics,
                &report.masked_statistics,
            )
        })
        .inspect_err(|status| {
            tracing::warn!(
                site,
                round = report.round,
                reason = status.message(),
                "metrics refused"
            );
        })?;
        // The report that completes a round is answered once the round is on disk (the commit runs off
        // the lock meanwhile), so a site that hears "received" knows its metrics are committed.
        let limit = Duration::from_secs(self.shared.config.rounds.validation_deadline_s);
        let _committed = self
            .wait_for(limit, |study| (!study.is_committing(report.round)).then_some(()))
            .await;
        Ok(())
    }

    async fn report_analysis(&self, caller: Caller, report: AnalysisReport) -> Result<(), Status> {
        let (site, _) = self.authorize(caller, &report.claim)?;
        let answer = report.answer.decode().map_err(|e| {
            self.shared.telemetry.refuse("analysis-answer");
            Status::invalid_argument(format!("malformed analysis answer of site {site}: {e}"))
        })?;
        self.shared.telemetry.received("analysis", report.answer.len());
        self.mutate(|study| study.accept_analysis_answer(&site, &report.analysis, report.step, answer))
            .inspect_err(|status| {
                tracing::warn!(
                    site,
                    analysis = report.analysis,
                    step = report.step,
                    reason = status.message(),
                    "analysis answer refused"
                );
            })
    }
}
