//! The aggregator's gRPC service over mutual TLS: every call is authorized by the site id in the client
//! certificate (chain-verified against the study CA by rustls), checked against the study config, then
//! handed to the round logic ([`Study`]) under one lock.
//!
//! Refusals are logged with the site and reason, counted in `/metrics`, change no state, and reach the
//! node as a gRPC status that says what to fix. Long polls (`GetTask`, secure-aggregation stages) wait
//! on a change notification, never by spinning. Transfers stream in chunks of about 1 MiB with a
//! per-chunk idle timeout, so a slow link that keeps making progress is never cut off.

use crate::aggregation::Upload;
use crate::proto::federation_server::{Federation, FederationServer};
use crate::proto::{
    CheckInRequest, CheckInResponse, MetricsReceipt, MetricsReport, ModelChunk, ModelRef, ModelRequest,
    SecAggReply, SecAggRequest, StudyFinished, Task, TaskRequest, TrainTask, UpdateChunk, UploadReceipt,
    ValidateTask, Wait, task,
};
use crate::store::ModelBlob;
use crate::study::{Study, StudyError, TaskDecision};
use crate::telemetry::Telemetry;
use fedlnm_shared::config::{AggregatorConfig, SiteRole};
use fedlnm_shared::federation::SiteRoundMetrics;
use fedlnm_shared::weights::sha256_hex;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

/// Size of the chunks of a model download.
pub const CHUNK_BYTES: usize = 1 << 20;
/// How long a `GetTask` long poll waits before answering `Wait`.
const LONG_POLL: Duration = Duration::from_secs(20);
/// Longest silence between two chunks of an upload.
const CHUNK_IDLE: Duration = Duration::from_secs(120);

/// What can stop the server from starting or serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Study(#[from] StudyError),
    #[error("TLS configuration: {0}")]
    Tls(#[source] tonic::transport::Error),
    #[error("the gRPC server stopped: {0}")]
    Transport(#[source] tonic::transport::Error),
    #[error("cannot serve /metrics on {address}: {source}")]
    Metrics { address: String, source: std::io::Error },
}

struct Shared {
    config: Arc<AggregatorConfig>,
    study: Mutex<Study>,
    changed: watch::Sender<u64>,
    telemetry: Arc<Telemetry>,
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
        Ok(Self {
            shared: Arc::new(Shared {
                config,
                study: Mutex::new(study),
                changed,
                telemetry,
            }),
        })
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

    /// Runs `f` on the study, then lets it move on (closing complete stages) and wakes waiters.
    fn mutate<R>(&self, f: impl FnOnce(&mut Study) -> R) -> R {
        let result = {
            let mut study = self.lock();
            let result = f(&mut study);
            while study.tick(Instant::now()) {}
            result
        };
        self.shared.changed.send_modify(|n| *n += 1);
        result
    }

    /// Closes whatever is past its deadline; returns the next deadline.
    fn tick(&self) -> Option<Instant> {
        let mut changed = false;
        let next = {
            let mut study = self.lock();
            while study.tick(Instant::now()) {
                changed = true;
            }
            study.next_deadline()
        };
        if changed {
            self.shared.changed.send_modify(|n| *n += 1);
        }
        next
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
    fn authorize(
        &self,
        certificate_site: Option<String>,
        claimed_site: &str,
        claimed_study: &str,
    ) -> Result<(String, SiteRole), Status> {
        let config = &self.shared.config;
        let telemetry = &self.shared.telemetry;
        let Some(site) = certificate_site else {
            tracing::warn!("refused: no usable client certificate");
            telemetry.refuse("no-certificate");
            return Err(Status::unauthenticated(
                "no client certificate naming a site was presented",
            ));
        };
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

/// The site id of the client certificate of a request, if any.
fn certificate_site<T>(request: &Request<T>) -> Option<String> {
    let certificates = request.peer_certs()?;
    let leaf = certificates.first()?;
    match fedlnm_shared::tls::site_of_certificate(leaf.as_ref()) {
        Ok(site) => Some(site),
        Err(error) => {
            tracing::warn!(%error, "client certificate without a site identity");
            None
        }
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
    let kind = match decision {
        TaskDecision::Wait { reason } => task::Kind::Wait(Wait {
            retry_after_ms: 500,
            reason,
        }),
        TaskDecision::Train(assignment) => task::Kind::Train(TrainTask {
            round: assignment.round,
            model: Some(model_ref(&assignment.model)),
            plan_json: assignment.plan_json,
            local_tensor_patterns: assignment.local_tensor_patterns,
            aggregation: assignment.fields.aggregation,
            secagg_config_json: assignment.fields.secagg_config_json,
            secagg_site_id: assignment.fields.secagg_site_id,
        }),
        TaskDecision::Validate { round, model } => task::Kind::Validate(ValidateTask {
            round,
            model: Some(model_ref(&model)),
        }),
        TaskDecision::Finished { rounds, model } => task::Kind::Finished(StudyFinished {
            rounds,
            model: Some(model_ref(&model)),
        }),
    };
    Task { kind: Some(kind) }
}

type ModelStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<ModelChunk, Status>> + Send>>;

#[tonic::async_trait]
impl Federation for FederationService {
    async fn check_in(&self, request: Request<CheckInRequest>) -> Result<Response<CheckInResponse>, Status> {
        let certificate_site = certificate_site(&request);
        let request = request.into_inner();
        let (site, role) = self.authorize(certificate_site, &request.site, &request.study)?;
        tracing::info!(site, %role, node_version = request.node_version, "site checked in");
        Ok(Response::new(CheckInResponse {
            study: self.shared.config.study.clone(),
            site,
            role: role.to_string(),
            aggregator_version: env!("CARGO_PKG_VERSION").to_owned(),
        }))
    }

    async fn get_task(&self, request: Request<TaskRequest>) -> Result<Response<Task>, Status> {
        let certificate_site = certificate_site(&request);
        let request = request.into_inner();
        let (site, role) = self.authorize(certificate_site, &request.site, &request.study)?;
        let decision = self
            .wait_for(LONG_POLL, |study| match study.task_for(&site, role) {
                TaskDecision::Wait { .. } => None,
                decision => Some(decision),
            })
            .await
            .unwrap_or_else(|| self.lock().task_for(&site, role));
        Ok(Response::new(task_message(decision)))
    }

    type DownloadModelStream = ModelStream;

    async fn download_model(
        &self,
        request: Request<ModelRequest>,
    ) -> Result<Response<Self::DownloadModelStream>, Status> {
        let certificate_site = certificate_site(&request);
        let request = request.into_inner();
        let (site, _) = self.authorize(certificate_site, &request.site, &request.study)?;
        let model = self.lock().model(request.version).ok_or_else(|| {
            Status::not_found(format!(
                "model version {} is not available (only the committed and the validated one are)",
                request.version
            ))
        })?;
        tracing::debug!(
            site,
            version = model.version,
            bytes = model.bytes.len(),
            "model download"
        );
        self.shared.telemetry.sent("model", model.bytes.len());
        let total_size = model.bytes.len() as u64;
        let chunks = (0..model.bytes.len().div_ceil(CHUNK_BYTES).max(1)).map(move |index| {
            let start = index * CHUNK_BYTES;
            let end = (start + CHUNK_BYTES).min(model.bytes.len());
            Ok(ModelChunk {
                offset: start as u64,
                data: model.bytes[start..end].to_vec(),
                total_size,
                digest: model.digest.clone(),
            })
        });
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }

    async fn upload_update(
        &self,
        request: Request<Streaming<UpdateChunk>>,
    ) -> Result<Response<UploadReceipt>, Status> {
        let certificate_site = certificate_site(&request);
        let mut stream = request.into_inner();
        let first = next_chunk(&mut stream)
            .await?
            .ok_or_else(|| Status::invalid_argument("empty upload"))?;
        let header = first
            .header
            .ok_or_else(|| Status::invalid_argument("the first chunk of an upload must carry its header"))?;
        let (site, role) = self.authorize(certificate_site, &header.site, &header.study)?;
        self.require_training_site(&site, role)?;
        let limit = self.mutate(|study| study.upload_limit(&site, header.round))?;
        if header.total_size > limit {
            self.shared.telemetry.refuse("oversized-update");
            tracing::warn!(site, size = header.total_size, limit, "refused: oversized update");
            return Err(Status::resource_exhausted(format!(
                "an update of {} bytes exceeds this round's limit of {limit} bytes",
                header.total_size
            )));
        }
        let total = usize::try_from(header.total_size).unwrap_or(usize::MAX);
        let mut payload = Vec::with_capacity(total);
        payload.extend_from_slice(&first.data);
        while payload.len() <= total {
            let Some(chunk) = next_chunk(&mut stream).await? else {
                break;
            };
            if chunk.header.is_some() {
                return Err(Status::invalid_argument(
                    "only the first chunk may carry a header",
                ));
            }
            payload.extend_from_slice(&chunk.data);
        }
        if payload.len() != total {
            self.shared.telemetry.refuse("truncated-or-oversized-update");
            return Err(Status::invalid_argument(format!(
                "the update declared {total} bytes but {} arrived",
                payload.len()
            )));
        }
        if sha256_hex(&payload) != header.digest {
            self.shared.telemetry.refuse("update-digest");
            return Err(Status::data_loss(
                "the update's SHA-256 does not match its header: corrupted in transit",
            ));
        }
        self.shared.telemetry.received("update", payload.len());
        let upload = Upload {
            site: &site,
            format: &header.format,
            n_samples: header.n_samples,
            payload: &payload,
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
        Ok(Response::new(UploadReceipt {
            round: header.round,
            bytes: payload.len() as u64,
        }))
    }

    async fn secure_aggregation(
        &self,
        request: Request<SecAggRequest>,
    ) -> Result<Response<SecAggReply>, Status> {
        let certificate_site = certificate_site(&request);
        let request = request.into_inner();
        let (site, role) = self.authorize(certificate_site, &request.site, &request.study)?;
        self.require_training_site(&site, role)?;
        self.shared
            .telemetry
            .received("secure-aggregation", request.payload.len());
        let attempt = self
            .mutate(|study| study.accept_message(&site, request.round, &request.stage, &request.payload))
            .inspect_err(|status| {
                tracing::warn!(
                    site,
                    stage = request.stage,
                    reason = status.message(),
                    "protocol message refused"
                );
                self.shared.telemetry.refuse("secure-aggregation-message");
            })?;
        // The last stage has no reply: accepting the shares is the answer (and the round may already
        // have moved on to validation because of them).
        if request.stage == fedlnm_shared::federation::STAGE_UNMASK_RESPONSE {
            return Ok(Response::new(SecAggReply { payload: Vec::new() }));
        }
        let limit = Duration::from_secs(
            self.shared.config.rounds.round_deadline_s + 2 * self.shared.config.rounds.stage_timeout_s,
        );
        let reply = self
            .wait_for(limit, |study| {
                study.reply(&site, request.round, attempt, &request.stage)
            })
            .await
            .unwrap_or_else(|| Err(Status::deadline_exceeded("the stage did not close in time")))?;
        self.shared.telemetry.sent("secure-aggregation", reply.len());
        Ok(Response::new(SecAggReply { payload: reply }))
    }

    async fn report_metrics(
        &self,
        request: Request<MetricsReport>,
    ) -> Result<Response<MetricsReceipt>, Status> {
        let certificate_site = certificate_site(&request);
        let request = request.into_inner();
        let (site, role) = self.authorize(certificate_site, &request.site, &request.study)?;
        let metrics: SiteRoundMetrics = serde_json::from_str(&request.metrics_json)
            .map_err(|e| Status::invalid_argument(format!("malformed metrics of site {site}: {e}")))?;
        self.shared
            .telemetry
            .received("metrics", request.metrics_json.len());
        self.mutate(|study| {
            study.accept_metrics(&site, role, request.round, &request.model_digest, metrics)
        })?;
        Ok(Response::new(MetricsReceipt { round: request.round }))
    }
}

/// The next chunk of an upload, or `None` at its end; an idle link times out per chunk only.
async fn next_chunk(stream: &mut Streaming<UpdateChunk>) -> Result<Option<UpdateChunk>, Status> {
    match tokio::time::timeout(CHUNK_IDLE, stream.message()).await {
        Ok(result) => result,
        Err(_) => Err(Status::deadline_exceeded(format!(
            "no data for {} s during an upload",
            CHUNK_IDLE.as_secs()
        ))),
    }
}

/// Serves the study on `listener` with mutual TLS 1.3 until `shutdown` resolves; also `/metrics` when
/// the config names `metrics_listen`.
///
/// # Errors
/// [`ServeError`]: unreadable TLS files, transport failures.
pub async fn serve(
    service: FederationService,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    fedlnm_shared::tls::install_crypto_provider();
    let config = service.shared.config.clone();
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|source| ServeError::Read {
            path: path.to_path_buf(),
            source,
        })
    };
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(
            read(&config.tls.certificate)?,
            read(&config.tls.key)?,
        ))
        .client_ca_root(Certificate::from_pem(read(&config.tls.ca)?));
    let address = listener.local_addr().ok();
    let (stop, stopped) = watch::channel(false);
    let stop_signal = move |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let mut metrics_task = None;
    if let Some(metrics_address) = &config.metrics_listen {
        let metrics_listener =
            TcpListener::bind(metrics_address)
                .await
                .map_err(|source| ServeError::Metrics {
                    address: metrics_address.clone(),
                    source,
                })?;
        tracing::info!(
            address = metrics_address,
            "Prometheus metrics on /metrics (plain HTTP)"
        );
        let telemetry = service.telemetry();
        let signal = stop_signal(stopped.clone());
        metrics_task = Some(AbortOnDrop(tokio::spawn(async move {
            if let Err(error) = crate::telemetry::serve_metrics(telemetry, metrics_listener, signal).await {
                tracing::error!(%error, "the /metrics endpoint stopped");
            }
        })));
    }
    // Deadlines: wake when the next one is due (at least once a second). The guard stops the ticker
    // however `serve` ends, even when its future is dropped.
    let ticker = {
        let service = service.clone();
        let mut stopped = stopped.clone();
        AbortOnDrop(tokio::spawn(async move {
            loop {
                let next = service.tick();
                let sleep = next.map_or(Duration::from_secs(1), |at| {
                    at.saturating_duration_since(Instant::now())
                        .min(Duration::from_secs(1))
                });
                tokio::select! {
                    () = tokio::time::sleep(sleep + Duration::from_millis(5)) => {}
                    _ = stopped.wait_for(|stop| *stop) => return,
                }
            }
        }))
    };
    tracing::info!(
        study = config.study,
        ?address,
        sites = config.sites.len(),
        "aggregator listening (mutual TLS 1.3)"
    );
    let result = Server::builder()
        .tls_config(tls)
        .map_err(ServeError::Tls)?
        .add_service(
            FederationServer::new(service)
                .max_decoding_message_size(8 << 20)
                .max_encoding_message_size(8 << 20),
        )
        .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), shutdown)
        .await
        .map_err(ServeError::Transport);
    let _ = stop.send(true);
    drop(ticker);
    drop(metrics_task);
    result
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
