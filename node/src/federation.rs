//! The node's side of the federated rounds (federation.md, steps 1–6): a loop that only ever dials out
//! — long-poll the aggregator for a task, download the global model in chunks and check its digest,
//! train locally and upload the delta (masked by secure aggregation, or in the clear when the study
//! chose plain FedAvg), score each new global model on the local validation patients and report
//! aggregate metrics only. A lost connection or a restart of either side is not an error: the node
//! reconnects with back-off and takes whatever task the aggregator has now.

use crate::client::{self, ClientError};
use crate::commands::model::{load_examples, prepare_autotune_cache};
use crate::proto::federation_client::FederationClient;
use crate::proto::{
    MetricsReport, ModelRef, ModelRequest, SecAggRequest, TaskRequest, TrainTask, UpdateChunk, UpdateHeader,
    ValidateTask, task,
};
use anyhow::{Context as _, bail};
use fedlnm_shared::config::{ComputeDevice, NodeConfig, SiteRole};
use fedlnm_shared::data;
use fedlnm_shared::features::Example;
use fedlnm_shared::federation::fedavg;
use fedlnm_shared::federation::{SiteRoundMetrics, wire};
use fedlnm_shared::model_config::{ModelConfig, TrainPlan};
use fedlnm_shared::secagg::{
    KeyDirectory, RoundConfig, SecAggClient, SecAggConfig, ShareDelivery, SiteId, UnmaskRequest,
};
use fedlnm_shared::staging::Stage;
use fedlnm_shared::train::{self, TrainingEvent};
use fedlnm_shared::weights::{NamedTensors, sha256_hex};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::transport::Channel;

/// Size of the chunks of an upload.
const CHUNK_BYTES: usize = 1 << 20;
/// Seed of the node's train/validation split (fixed: the same patients validate every round).
const SPLIT_SEED: u64 = 20_261_123;
/// Where the node keeps its copy of the models and its local normalisation layers (FedBN).
const LOCAL_NORM_FILE: &str = "local-norm.safetensors";
const FINAL_MODEL_FILE: &str = "final-global.safetensors";
/// cubecl's CUDA autotune results, inside the work folder (kept between runs).
pub const AUTOTUNE_CACHE_DIR: &str = "cubecl-autotune";

/// What a node did in a study.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunSummary {
    pub rounds_trained: Vec<u64>,
    pub rounds_validated: Vec<u64>,
    /// The final global model's file and digest.
    pub final_model: Option<(PathBuf, String)>,
}

/// The site's patients, encoded for one model configuration and split once.
struct SiteExamples {
    config_digest: String,
    train: Vec<Example>,
    validation: Vec<Example>,
    validation_stages: Vec<Stage>,
}

/// A node of one site.
pub struct Node {
    config: NodeConfig,
    role: Option<SiteRole>,
    examples: Option<SiteExamples>,
    summary: RunSummary,
}

impl Node {
    #[must_use]
    pub fn new(config: NodeConfig) -> Self {
        Self {
            config,
            role: None,
            examples: None,
            summary: RunSummary::default(),
        }
    }

    /// Takes part in the study until the aggregator says it is finished. Transport failures are
    /// retried with back-off (1 s doubling to 30 s); a refusal that retrying cannot fix (wrong study,
    /// unknown site, a model whose configuration differs from the study's) ends the run with an error.
    ///
    /// # Errors
    /// A refusal by the aggregator, unusable site data, or a model this node must not run.
    pub async fn run(mut self) -> anyhow::Result<RunSummary> {
        std::fs::create_dir_all(&self.config.work_dir)
            .with_context(|| format!("cannot create {}", self.config.work_dir.display()))?;
        if self.config.device == ComputeDevice::Cuda {
            // Kernel choices stay with the site's state, so that its next run starts warm.
            prepare_autotune_cache(&self.config.work_dir.join(AUTOTUNE_CACHE_DIR));
        }
        let mut backoff = Duration::from_secs(1);
        loop {
            let mut client = match client::connect(&self.config).await {
                Ok(client) => client,
                Err(error) => {
                    tracing::warn!(site = self.config.site, %error, "cannot reach the aggregator; retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    continue;
                }
            };
            if self.role.is_none() {
                let response = client::check_in(&self.config).await?;
                let role = match response.role.as_str() {
                    "validate" => SiteRole::Validate,
                    _ => SiteRole::Train,
                };
                tracing::info!(site = self.config.site, %role, "checked in");
                self.role = Some(role);
            }
            match self.session(&mut client).await {
                Ok(true) => return Ok(self.summary),
                Ok(false) => backoff = Duration::from_secs(1),
                Err(error) => {
                    if let Some(status) = error.downcast_ref::<tonic::Status>()
                        && is_fatal(status.code())
                    {
                        return Err(error.context("the aggregator refused this node"));
                    }
                    if error.downcast_ref::<tonic::Status>().is_none()
                        && error.downcast_ref::<ClientError>().is_none()
                    {
                        return Err(error);
                    }
                    tracing::warn!(
                        site = self.config.site,
                        error = format!("{error:#}"),
                        "lost the round; retrying in {backoff:?}"
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// Takes tasks on one connection; `Ok(true)` when the study is finished.
    async fn session(&mut self, client: &mut FederationClient<Channel>) -> anyhow::Result<bool> {
        loop {
            let task = client
                .get_task(TaskRequest {
                    site: self.config.site.clone(),
                    study: self.config.study.clone(),
                    node_version: env!("CARGO_PKG_VERSION").to_owned(),
                })
                .await?
                .into_inner();
            match task.kind {
                None => bail!("the aggregator sent an empty task"),
                Some(task::Kind::Wait(wait)) => {
                    tracing::debug!(site = self.config.site, reason = wait.reason, "waiting");
                    tokio::time::sleep(Duration::from_millis(u64::from(wait.retry_after_ms))).await;
                }
                Some(task::Kind::Train(train)) => {
                    if let Err(error) = self.train_round(client, &train).await {
                        // A secure-aggregation round that went on without this site is not fatal.
                        if let Some(status) = error.downcast_ref::<tonic::Status>()
                            && matches!(
                                status.code(),
                                tonic::Code::FailedPrecondition | tonic::Code::Aborted
                            )
                        {
                            tracing::warn!(
                                site = self.config.site,
                                round = train.round,
                                reason = status.message(),
                                "left out of this round"
                            );
                            continue;
                        }
                        return Err(error);
                    }
                    self.summary.rounds_trained.push(train.round);
                }
                Some(task::Kind::Validate(validate)) => {
                    self.validate_round(client, &validate).await?;
                    self.summary.rounds_validated.push(validate.round);
                }
                Some(task::Kind::Finished(finished)) => {
                    let model = finished.model.context("the final task names no model")?;
                    // Downloaded like any model: size, digest and configuration checked.
                    let (_, _, bytes) = self.download(client, &model).await?;
                    let file = self.config.work_dir.join(FINAL_MODEL_FILE);
                    write_atomically(&file, &bytes)?;
                    tracing::info!(site = self.config.site, rounds = finished.rounds, file = %file.display(), "study finished; final model saved");
                    self.summary.final_model = Some((file, model.digest));
                    return Ok(true);
                }
            }
        }
    }

    /// Downloads a model version in chunks and checks its size, digest and configuration.
    async fn download(
        &self,
        client: &mut FederationClient<Channel>,
        model: &ModelRef,
    ) -> anyhow::Result<(ModelConfig, NamedTensors, Vec<u8>)> {
        if let Some(pinned) = &self.config.model_config_digest
            && pinned != &model.config_digest
        {
            bail!(
                "the study's model has configuration digest {} but node.toml pins {pinned}: refusing to run it",
                model.config_digest
            );
        }
        let mut stream = client
            .download_model(ModelRequest {
                site: self.config.site.clone(),
                study: self.config.study.clone(),
                version: model.version,
            })
            .await?
            .into_inner();
        let expected = usize::try_from(model.size_bytes).unwrap_or(usize::MAX);
        let mut bytes = Vec::with_capacity(expected.min(1 << 30));
        while let Some(chunk) = stream.message().await? {
            if chunk.offset != bytes.len() as u64 || bytes.len() + chunk.data.len() > expected {
                bail!(
                    "model download out of order or larger than announced ({} bytes)",
                    model.size_bytes
                );
            }
            bytes.extend_from_slice(&chunk.data);
        }
        if bytes.len() != expected || sha256_hex(&bytes) != model.digest {
            bail!(
                "model version {} arrived corrupted ({} of {} bytes, digest mismatch)",
                model.version,
                bytes.len(),
                model.size_bytes
            );
        }
        let origin = PathBuf::from(format!("global model version {}", model.version));
        let (weights, metadata) = NamedTensors::from_safetensors_bytes(&bytes, &origin)?;
        let config = ModelConfig::from_checkpoint_metadata(&metadata)?;
        if config.digest() != model.config_digest {
            bail!("the model's stored configuration does not match the digest the aggregator announced");
        }
        Ok((config, weights, bytes))
    }

    /// Loads, encodes and splits the site's patients for `config` (once per configuration).
    async fn examples_for(&mut self, config: &ModelConfig) -> anyhow::Result<&SiteExamples> {
        let digest = config.digest();
        if self.examples.as_ref().is_none_or(|e| e.config_digest != digest) {
            let dir = self.config.data.clone();
            let model = config.clone();
            let role = self.role.unwrap_or(SiteRole::Train);
            let fraction = self.config.validation_fraction;
            let site = self.config.site.clone();
            let examples = tokio::task::spawn_blocking(move || -> anyhow::Result<SiteExamples> {
                let (examples, stages) = load_examples(&dir, &model, true, false)?;
                let indices: Vec<usize> = (0..examples.len()).collect();
                let (train_idx, validation_idx) = if role == SiteRole::Validate {
                    (Vec::new(), indices)
                } else {
                    let labels: Vec<bool> = examples
                        .iter()
                        .map(|e| e.targets.is_some_and(|t| t.lnm))
                        .collect();
                    let split = data::stratified_split(&labels, fraction, SPLIT_SEED)?;
                    (split.train, split.validation)
                };
                let pick = |idx: &[usize]| idx.iter().map(|&i| examples[i].clone()).collect::<Vec<_>>();
                let validation_stages = validation_idx
                    .iter()
                    .map(|&i| stages[i].context("a labelled patient without a pathological stage"))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                tracing::info!(
                    site,
                    train = train_idx.len(),
                    validation = validation_idx.len(),
                    "site data loaded"
                );
                Ok(SiteExamples {
                    config_digest: digest,
                    train: pick(&train_idx),
                    validation: pick(&validation_idx),
                    validation_stages,
                })
            })
            .await??;
            self.examples = Some(examples);
        }
        self.examples.as_ref().context("site examples")
    }

    /// FedBN: the site's own normalisation tensors replace the global ones (when it has trained).
    fn with_local_norm(
        &self,
        mut weights: NamedTensors,
        patterns: &[String],
    ) -> anyhow::Result<NamedTensors> {
        let file = self.config.work_dir.join(LOCAL_NORM_FILE);
        if patterns.is_empty() || !file.exists() {
            return Ok(weights);
        }
        let (local, _) = NamedTensors::load_safetensors(&file)?;
        for tensor in &mut weights.tensors {
            if let Some(own) = local.get(&tensor.name)
                && own.shape == tensor.shape
            {
                tensor.values.clone_from(&own.values);
            }
        }
        Ok(weights)
    }

    async fn train_round(
        &mut self,
        client: &mut FederationClient<Channel>,
        task: &TrainTask,
    ) -> anyhow::Result<()> {
        let round = task.round;
        let model_ref = task.model.clone().context("the training task names no model")?;
        let mut plan: TrainPlan =
            serde_json::from_str(&task.plan_json).context("unreadable training plan")?;
        plan.validate()?;
        // Each round shuffles and augments differently, reproducibly.
        plan.seed = plan
            .seed
            .wrapping_add(round.wrapping_mul(1_000_003))
            .wrapping_add(seed_of(&self.config.site));
        let site = self.config.site.clone();
        tracing::info!(site, round, aggregation = task.aggregation, "training task");

        // Secure aggregation, rounds 0 and 1 (keys, encrypted shares) before the expensive training.
        let mut secure = if task.aggregation == "secure" {
            let config: SecAggConfig = serde_json::from_str(&task.secagg_config_json)
                .context("unreadable secure-aggregation config")?;
            if config.study_id != self.config.study
                || config.round != round
                || config.model_version.split('#').next() != Some(model_ref.digest.as_str())
            {
                bail!("the secure-aggregation configuration is for another study, round or model");
            }
            let round_config: RoundConfig = config.validate()?;
            let (mut secagg, advertise) = SecAggClient::new(round_config, SiteId(task.secagg_site_id))?;
            let directory: KeyDirectory = self
                .exchange(
                    client,
                    round,
                    fedlnm_shared::federation::STAGE_ADVERTISE_KEYS,
                    &advertise,
                )
                .await?;
            let shares = secagg.share_keys(&directory)?;
            let delivery: ShareDelivery = self
                .exchange(
                    client,
                    round,
                    fedlnm_shared::federation::STAGE_SHARE_KEYS,
                    &shares,
                )
                .await?;
            Some((secagg, delivery))
        } else if task.aggregation == "plain" {
            None
        } else {
            bail!("unknown aggregation '{}'", task.aggregation);
        };

        let (config, global, _) = self.download(client, &model_ref).await?;
        let start = self.with_local_norm(global.clone(), &task.local_tensor_patterns)?;
        let device = self.config.device;
        let examples = self.examples_for(&config).await?;
        let train_set = examples.train.clone();
        let train_config = config.clone();
        let progress_site = site.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            train::train_local(
                device,
                &train_config,
                &start,
                &train_set,
                &[],
                &plan,
                &mut |event| {
                    if let TrainingEvent::Epoch(log) = event {
                        tracing::info!(
                            site = progress_site,
                            round,
                            epoch = log.epoch,
                            loss = log.train_loss,
                            images_per_second = log.images_per_second,
                            "local epoch"
                        );
                    }
                },
            )
        })
        .await??;
        let patterns = task.local_tensor_patterns.clone();
        let is_local = |name: &str| {
            patterns
                .iter()
                .any(|p| fedlnm_shared::secagg::glob_match(p, name))
        };
        if !patterns.is_empty() {
            let local = NamedTensors {
                tensors: outcome
                    .weights
                    .tensors
                    .iter()
                    .filter(|t| is_local(&t.name))
                    .cloned()
                    .collect(),
            };
            local.save_safetensors(
                &self.config.work_dir.join(LOCAL_NORM_FILE),
                &std::collections::BTreeMap::new(),
            )?;
        }
        let delta = fedavg::delta(&outcome.weights, &global, |name| !is_local(name))?;
        let n_samples = outcome.n_samples as u64;

        let (format, payload) = match &mut secure {
            Some((secagg, delivery)) => {
                let masked = secagg.masked_input(delivery, &delta, n_samples)?;
                ("secure", wire::encode(&masked))
            }
            None => (
                "plain",
                delta
                    .to_safetensors_bytes(&std::collections::BTreeMap::new())
                    .map_err(|e| anyhow::anyhow!("cannot serialize the delta: {e}"))?,
            ),
        };
        self.upload(client, round, format, n_samples, payload).await?;
        tracing::info!(site, round, n_samples, format, "update uploaded");

        if let Some((mut secagg, _)) = secure {
            let request: UnmaskRequest = self
                .exchange_raw(
                    client,
                    round,
                    fedlnm_shared::federation::STAGE_UNMASK_REQUEST,
                    Vec::new(),
                )
                .await?;
            let response = secagg.unmask(&request)?;
            let _: Vec<u8> = self
                .exchange_bytes(
                    client,
                    round,
                    fedlnm_shared::federation::STAGE_UNMASK_RESPONSE,
                    wire::encode(&response),
                )
                .await?;
        }
        Ok(())
    }

    /// Sends a protocol message and decodes the aggregator's reply for this site.
    async fn exchange<T: serde::Serialize, R: serde::de::DeserializeOwned>(
        &self,
        client: &mut FederationClient<Channel>,
        round: u64,
        stage: &str,
        message: &T,
    ) -> anyhow::Result<R> {
        self.exchange_raw(client, round, stage, wire::encode(message))
            .await
    }

    async fn exchange_raw<R: serde::de::DeserializeOwned>(
        &self,
        client: &mut FederationClient<Channel>,
        round: u64,
        stage: &str,
        payload: Vec<u8>,
    ) -> anyhow::Result<R> {
        let reply = self.exchange_bytes(client, round, stage, payload).await?;
        wire::decode(&reply, stage).map_err(anyhow::Error::msg)
    }

    async fn exchange_bytes(
        &self,
        client: &mut FederationClient<Channel>,
        round: u64,
        stage: &str,
        payload: Vec<u8>,
    ) -> anyhow::Result<Vec<u8>> {
        let reply = client
            .secure_aggregation(SecAggRequest {
                site: self.config.site.clone(),
                study: self.config.study.clone(),
                round,
                stage: stage.to_owned(),
                payload,
            })
            .await?
            .into_inner();
        Ok(reply.payload)
    }

    /// Streams an update in chunks; the header goes first.
    async fn upload(
        &self,
        client: &mut FederationClient<Channel>,
        round: u64,
        format: &str,
        n_samples: u64,
        payload: Vec<u8>,
    ) -> anyhow::Result<()> {
        let header = UpdateHeader {
            site: self.config.site.clone(),
            study: self.config.study.clone(),
            round,
            format: format.to_owned(),
            n_samples: if format == "plain" { n_samples } else { 0 },
            total_size: payload.len() as u64,
            digest: sha256_hex(&payload),
        };
        let chunks: Vec<UpdateChunk> = payload
            .chunks(CHUNK_BYTES)
            .enumerate()
            .map(|(index, data)| UpdateChunk {
                header: (index == 0).then(|| header.clone()),
                data: data.to_vec(),
            })
            .collect();
        let chunks = if chunks.is_empty() {
            vec![UpdateChunk {
                header: Some(header),
                data: Vec::new(),
            }]
        } else {
            chunks
        };
        client.upload_update(tokio_stream::iter(chunks)).await?;
        Ok(())
    }

    async fn validate_round(
        &mut self,
        client: &mut FederationClient<Channel>,
        task: &ValidateTask,
    ) -> anyhow::Result<()> {
        let model_ref = task.model.clone().context("the validation task names no model")?;
        let (config, global, _) = self.download(client, &model_ref).await?;
        let role = self.role.unwrap_or(SiteRole::Train);
        let patterns: Vec<String> = global.local_norm_names().map(str::to_owned).collect();
        let weights = self.with_local_norm(global, &patterns)?;
        let device = self.config.device;
        let examples = self.examples_for(&config).await?;
        let validation = examples.validation.clone();
        let stages = examples.validation_stages.clone();
        let site = self.config.site.clone();
        let metrics = tokio::task::spawn_blocking(move || -> anyhow::Result<SiteRoundMetrics> {
            let predictions = train::predict(device, &config, &weights, &validation, 32)?;
            SiteRoundMetrics::from_predictions(&site, role, &validation, &predictions, &stages)
                .map_err(anyhow::Error::msg)
        })
        .await??;
        tracing::info!(site = self.config.site, round = task.round, auc = ?metrics.auc, "validation of the new global model");
        client
            .report_metrics(MetricsReport {
                site: self.config.site.clone(),
                study: self.config.study.clone(),
                round: task.round,
                model_digest: model_ref.digest,
                metrics_json: serde_json::to_string(&metrics)?,
            })
            .await?;
        Ok(())
    }
}

/// Codes that retrying cannot fix.
fn is_fatal(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied | tonic::Code::InvalidArgument
    )
}

/// A stable per-site seed offset (sites must not shuffle identically).
fn seed_of(site: &str) -> u64 {
    site.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Writes a file via a temporary name and a rename, so that a reader never sees half of it.
fn write_atomically(file: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let temporary = file.with_extension("partial");
    std::fs::write(&temporary, bytes).with_context(|| format!("cannot write {}", temporary.display()))?;
    std::fs::rename(&temporary, file).with_context(|| format!("cannot write {}", file.display()))?;
    Ok(())
}
