//! The node's side of the federated rounds (federation.md, steps 1–6): a loop that only ever dials out
//! — long-poll the aggregator for a task, download the global model in chunks and check its digest,
//! train locally and upload the delta (masked by secure aggregation, or in the clear when the study
//! chose plain FedAvg), score each new global model on the local validation patients and report
//! aggregate metrics only. A lost connection or a restart of either side is not an error: the node
//! reconnects with back-off and takes whatever task the aggregator has now.

use crate::commands::compare::{PatientScore, scores_file};
use crate::commands::model::{LoadedExamples, load_examples, prepare_autotune_cache};
use anyhow::{Context as _, bail};
use fedlnm_model::train::{self, TrainingEvent};
use fedlnm_protocol::payload;
use fedlnm_protocol::{Client, ClientError, ModelRef, RoundAggregation, Task, TrainTask, ValidateTask};
use fedlnm_shared::checkpoint::Checkpoint;
use fedlnm_shared::config::{ComputeDevice, CrossValidationFold, NodeConfig, SiteRole};
use fedlnm_shared::data;
use fedlnm_shared::features::Example;
use fedlnm_shared::federation::{
    LocalTensors, ScoringStatistics, SiteCohort, SiteRoundMetrics, SiteValidation, fedavg,
};
use fedlnm_shared::files::write_atomically;
use fedlnm_shared::model_config::ModelConfig;
use fedlnm_shared::secagg::{Authentication, InputKind};
use fedlnm_shared::staging::Stage;
use fedlnm_shared::weights::NamedTensors;
use std::path::PathBuf;
use std::time::Duration;

mod analysis;
mod secure;
use secure::is_left_out;
pub use secure::{authentication, rounding_secret, secret_from_hex, write_rounding_secret};

/// Seed of the node's train/validation split (fixed: the same patients validate every round).
const SPLIT_SEED: u64 = 20_261_123;
/// Where the node keeps its copy of the models and its local normalisation layers (FedBN).
const LOCAL_NORM_FILE: &str = "local-norm.safetensors";
/// The final global model, kept when the study finishes (`site-report` explains with it).
pub const FINAL_MODEL_FILE: &str = "final-global.safetensors";
/// The site's own records of each validation (metrics and score histogram), never sent.
pub const OWN_RECORDS_DIR: &str = "validation";
/// The site's rounding secret ([`rounding_secret`]).
pub const ROUNDING_SECRET_FILE: &str = "rounding.secret";
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

/// A site's patients, encoded for one model configuration and split as its node splits them.
pub struct SiteExamples {
    pub train: Vec<Example>,
    pub validation: Vec<Example>,
    /// The validation patients' pathological stages.
    pub validation_stages: Vec<Stage>,
    /// The site's patient flow and characteristics (with its training and validation sizes), sent
    /// with each validation report.
    pub cohort: SiteCohort,
}

impl SiteExamples {
    /// Splits a site's `loaded` patients the same way in every round and every study on the same
    /// data: a validate-only site validates on all of them; a training site holds out `fraction`
    /// (stratified by LNM, fixed seed) or, with `folds`, validates on fold `fold`. (The simulation's
    /// centralised and single-site baselines split through it too.)
    ///
    /// # Errors
    /// A split the labels cannot make (too few patients of a class), or a validation patient
    /// without a pathological stage.
    pub fn split(
        loaded: LoadedExamples,
        role: SiteRole,
        fraction: f64,
        folds: Option<CrossValidationFold>,
    ) -> anyhow::Result<Self> {
        let LoadedExamples {
            examples,
            stages,
            mut cohort,
        } = loaded;
        let (train_idx, validation_idx) = if role == SiteRole::Validate {
            (Vec::new(), (0..examples.len()).collect())
        } else {
            let labels: Vec<bool> = examples
                .iter()
                .map(|e| e.targets.is_some_and(|t| t.lnm))
                .collect();
            let split = match folds {
                Some(CrossValidationFold { folds, fold }) => {
                    data::stratified_k_fold(&labels, folds, SPLIT_SEED)?.swap_remove(fold)
                }
                None => data::stratified_split(&labels, fraction, SPLIT_SEED)?,
            };
            (split.train, split.validation)
        };
        let pick = |idx: &[usize]| idx.iter().map(|&i| examples[i].clone()).collect::<Vec<_>>();
        let validation_stages = validation_idx
            .iter()
            .map(|&i| stages[i].context("a labelled patient without a pathological stage"))
            .collect::<anyhow::Result<Vec<_>>>()?;
        cohort.training = u64::try_from(train_idx.len()).unwrap_or(u64::MAX);
        cohort.validation = u64::try_from(validation_idx.len()).unwrap_or(u64::MAX);
        Ok(Self {
            train: pick(&train_idx),
            validation: pick(&validation_idx),
            validation_stages,
            cohort,
        })
    }
}

/// A node of one site.
pub struct Node {
    config: NodeConfig,
    /// The site's study key and the study CA, for instances that protect against a malicious
    /// aggregator (read from the TLS files when the run starts).
    authentication: Option<Authentication>,
    role: Option<SiteRole>,
    /// The site's examples and the digest of the model configuration they were encoded for.
    examples: Option<(String, SiteExamples)>,
    /// The manifest's patients, read at the first analysis step.
    records: Option<Vec<data::PatientRecord>>,
    summary: RunSummary,
}

impl Node {
    #[must_use]
    pub fn new(config: NodeConfig) -> Self {
        Self {
            config,
            authentication: None,
            role: None,
            examples: None,
            records: None,
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
        self.authentication = Some(authentication(&self.config)?);
        if self.config.device == ComputeDevice::Cuda {
            // Kernel choices stay with the site's state, so that its next run starts warm.
            prepare_autotune_cache(&self.config.work_dir.join(AUTOTUNE_CACHE_DIR));
        }
        let mut backoff = Duration::from_secs(1);
        loop {
            let mut client = match Client::connect(&self.config).await {
                Ok(client) => client,
                Err(error) => {
                    tracing::warn!(site = self.config.site, %error, "cannot reach the aggregator; retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    continue;
                }
            };
            if self.role.is_none() {
                let role = client.check_in().await?.role;
                tracing::info!(site = self.config.site, %role, "checked in");
                self.role = Some(role);
            }
            match self.session(&mut client).await {
                Ok(true) => return Ok(self.summary),
                Ok(false) => backoff = Duration::from_secs(1),
                Err(error) => {
                    match error.downcast_ref::<ClientError>() {
                        Some(client_error) if client_error.is_fatal() => {
                            return Err(error.context("the aggregator refused this node"));
                        }
                        Some(_) => {}
                        None => return Err(error),
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
    async fn session(&mut self, client: &mut Client) -> anyhow::Result<bool> {
        loop {
            match client.get_task().await? {
                Task::Wait { retry_after, reason } => {
                    tracing::debug!(site = self.config.site, reason, "waiting");
                    tokio::time::sleep(retry_after).await;
                }
                Task::Train(train) => {
                    if let Err(error) = self.train_round(client, &train).await {
                        // A secure-aggregation round that went on without this site is not fatal.
                        if is_left_out(&error) {
                            tracing::warn!(
                                site = self.config.site,
                                round = train.round,
                                reason = %error,
                                "left out of this round"
                            );
                            continue;
                        }
                        return Err(error);
                    }
                    self.summary.rounds_trained.push(train.round);
                }
                Task::Validate(validate) => {
                    self.validate_round(client, &validate).await?;
                    self.summary.rounds_validated.push(validate.round);
                }
                Task::Analyse(task) => self.answer_analysis(client, &task).await?,
                Task::Finished { rounds, model } => {
                    // Downloaded like any model: size, digest and configuration checked.
                    let (_, bytes) = self.download(client, &model).await?;
                    let file = self.config.work_dir.join(FINAL_MODEL_FILE);
                    write_atomically(&file, &bytes)?;
                    tracing::info!(site = self.config.site, rounds, file = %file.display(), "study finished; final model saved");
                    self.summary.final_model = Some((file, model.digest));
                    return Ok(true);
                }
            }
        }
    }

    /// Downloads a model version (size and digest checked by the transfer) and checks its
    /// configuration against the announced and the pinned digest.
    async fn download(&self, client: &mut Client, model: &ModelRef) -> anyhow::Result<(Checkpoint, Vec<u8>)> {
        if let Some(pinned) = &self.config.model_config_digest
            && pinned != &model.config_digest
        {
            bail!(
                "the study's model has configuration digest {} but node.toml pins {pinned}: refusing to run it",
                model.config_digest
            );
        }
        let bytes = client.download_model(model).await?;
        let origin = PathBuf::from(format!("global model version {}", model.version));
        let checkpoint = Checkpoint::from_bytes(&bytes, &origin)?;
        if checkpoint.config.digest() != model.config_digest {
            bail!("the model's stored configuration does not match the digest the aggregator announced");
        }
        Ok((checkpoint, bytes))
    }

    /// Loads, encodes and splits the site's patients for `config` (once per configuration).
    async fn examples_for(&mut self, config: &ModelConfig) -> anyhow::Result<&SiteExamples> {
        let digest = config.digest();
        if self.examples.as_ref().is_none_or(|(d, _)| *d != digest) {
            let dir = self.config.data.clone();
            let model = config.clone();
            let role = self.role.unwrap_or(SiteRole::Train);
            let fraction = self.config.validation_fraction;
            let folds = self.config.cross_validation;
            let site = self.config.site.clone();
            let examples = tokio::task::spawn_blocking(move || -> anyhow::Result<SiteExamples> {
                let examples =
                    SiteExamples::split(load_examples(&dir, &model, true, false)?, role, fraction, folds)?;
                tracing::info!(
                    site,
                    train = examples.train.len(),
                    validation = examples.validation.len(),
                    "site data loaded"
                );
                Ok(examples)
            })
            .await??;
            self.examples = Some((digest, examples));
        }
        self.examples
            .as_ref()
            .map(|(_, examples)| examples)
            .context("site examples")
    }

    /// FedBN: the site's own normalisation tensors replace the global ones (when it has trained).
    fn with_local_norm(
        &self,
        mut weights: NamedTensors,
        local_tensors: &LocalTensors,
    ) -> anyhow::Result<NamedTensors> {
        let file = self.config.work_dir.join(LOCAL_NORM_FILE);
        if local_tensors.is_empty() || !file.exists() {
            return Ok(weights);
        }
        let (local, _) = NamedTensors::load_safetensors(&file)?;
        for tensor in &mut weights.tensors {
            if local_tensors.contains(&tensor.name)
                && let Some(own) = local.get(&tensor.name)
                && own.shape == tensor.shape
            {
                tensor.values.clone_from(&own.values);
            }
        }
        Ok(weights)
    }

    async fn train_round(&mut self, client: &mut Client, task: &TrainTask) -> anyhow::Result<()> {
        let round = task.round;
        let model_ref = &task.model;
        let mut plan = task.plan.clone();
        plan.validate()?;
        // Each round shuffles and augments differently, reproducibly.
        plan.seed = plan
            .seed
            .wrapping_add(round.wrapping_mul(1_000_003))
            .wrapping_add(seed_of(&self.config.site));
        let site = self.config.site.clone();
        let local_tensors = &task.local_tensors;
        tracing::info!(site, round, aggregation = ?task.aggregation.kind(), "training task");

        let mut secure = match &task.aggregation {
            RoundAggregation::Secure { config, site_id } => Some(
                self.join_instance(
                    client,
                    round,
                    &model_ref.digest,
                    config,
                    *site_id,
                    InputKind::WeightedDelta,
                )
                .await?,
            ),
            RoundAggregation::Plain => None,
        };

        let (
            Checkpoint {
                config,
                weights: global,
            },
            _,
        ) = self.download(client, model_ref).await?;
        let start = self.with_local_norm(global.clone(), local_tensors)?;
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
        if !local_tensors.is_empty() {
            let local = NamedTensors {
                tensors: outcome
                    .weights
                    .tensors
                    .iter()
                    .filter(|t| local_tensors.contains(&t.name))
                    .cloned()
                    .collect(),
            };
            // Atomically: a node stopped mid-write must find its previous layers, not half a file.
            let bytes = local.to_safetensors_bytes(&std::collections::BTreeMap::new())?;
            write_atomically(&self.config.work_dir.join(LOCAL_NORM_FILE), &bytes)?;
        }
        let delta = fedavg::delta(&outcome.weights, &global, |name| {
            local_tensors.is_aggregated(name)
        })?;
        let n_samples = outcome.n_samples as u64;

        let format = task.aggregation.update_format();
        let payload = match &mut secure {
            Some((secagg, delivery)) => {
                let clipped = secagg.clipped_elements(&delta, n_samples);
                if clipped > 0 {
                    tracing::warn!(
                        site,
                        round,
                        clipped,
                        "{clipped} weight changes times the site's {n_samples} samples exceed what the \
                         secure-aggregation ring holds and are clipped (the aggregator's \
                         rounds.secure_aggregation_ring; \"z2_64\" holds 256 times more)"
                    );
                }
                payload::encode(&secagg.masked_input(delivery, &delta, n_samples)?)
            }
            None => delta.to_safetensors_bytes(&std::collections::BTreeMap::new())?,
        };
        client.upload_update(round, format, n_samples, &payload).await?;
        tracing::info!(site, round, n_samples, ?format, "update uploaded");

        if let Some((mut secagg, _)) = secure {
            self.unmask(client, round, &mut secagg).await?;
        }
        Ok(())
    }

    async fn validate_round(&mut self, client: &mut Client, task: &ValidateTask) -> anyhow::Result<()> {
        let round = task.round;
        let site = self.config.site.clone();
        tracing::info!(site, round, pooled = task.statistics.is_some(), "validation task");
        // The pool's secure sum, rounds 0 and 1 (keys, encrypted shares), before scoring.
        let mut pool = match &task.statistics {
            Some((config, site_id)) => {
                match self
                    .join_instance(
                        client,
                        round,
                        &task.model.digest,
                        config,
                        *site_id,
                        InputKind::Counts,
                    )
                    .await
                {
                    Ok(joined) => Some(joined),
                    Err(error) if is_left_out(&error) => {
                        tracing::warn!(site, round, reason = %error, "left out of the pooled statistics of this round");
                        None
                    }
                    Err(error) => return Err(error),
                }
            }
            None => None,
        };
        let (Checkpoint { config, weights }, _) = self.download(client, &task.model).await?;
        let role = self.role.unwrap_or(SiteRole::Train);
        let weights = self.with_local_norm(weights, &task.local_tensors)?;
        let device = self.config.device;
        let examples = self.examples_for(&config).await?;
        let validation = examples.validation.clone();
        let stages = examples.validation_stages.clone();
        let cohort = examples.cohort.clone();
        let scoring_site = site.clone();
        // AdaBN (no label is read): FedBN's validate-only site, which never trained normalisation
        // statistics of its own, re-estimates them on its own pictures before it scores; so does any
        // site of a study scoring with the sites' own statistics, unless it has FedBN's own layers.
        let statistics = ScoringStatistics::for_site(&task.local_tensors, task.adapt_normalisation, role);
        let adabn_seed = statistics.re_estimates().then(|| adapt_seed(&site, round));
        let (mut validation, scores) =
            tokio::task::spawn_blocking(move || -> anyhow::Result<(SiteValidation, Vec<PatientScore>)> {
                let predictions =
                    train::predict_at_site(device, &config, &weights, &validation, 32, adabn_seed)?;
                let scores = PatientScore::of_predictions(&validation, &predictions);
                let record = SiteRoundMetrics::from_predictions(
                    &scoring_site,
                    role,
                    &validation,
                    &predictions,
                    &stages,
                )?;
                Ok((record, scores))
            })
            .await??;
        validation.metrics.cohort = Some(cohort);
        validation.metrics.normalisation = Some(statistics);
        self.keep_own_record(round, &validation, &scores)?;
        let metrics = &validation.metrics;
        tracing::info!(site, round, auc = ?metrics.auc, "validation of the new global model");
        let masked = match &mut pool {
            Some((secagg, delivery)) => {
                payload::encode(&secagg.masked_counts(delivery, &validation.statistics())?)
            }
            None => Vec::new(),
        };
        let digest = &task.model.digest;
        match client.report_metrics(round, digest, metrics, masked).await {
            Ok(()) => {}
            // The pool's upload stage closed without this site: the metrics still count on their own.
            Err(error) if pool.is_some() && error.is_left_out() => {
                tracing::warn!(site, round, reason = %error, "left out of the pooled statistics; reporting the metrics alone");
                pool = None;
                client.report_metrics(round, digest, metrics, Vec::new()).await?;
            }
            Err(error) => return Err(error.into()),
        }
        if let Some((mut secagg, _)) = pool {
            match self.unmask(client, round, &mut secagg).await {
                Err(error) if is_left_out(&error) => {
                    tracing::warn!(site, round, reason = %error, "the pooled statistics went on without this site");
                }
                other => other?,
            }
        }
        Ok(())
    }

    /// Writes the site's own record of a validation (its metrics, score histogram and stage
    /// confusion matrices) to `validation/round-NNNN.json` in the work folder, and its patients'
    /// scores to `validation/round-NNNN.scores.json` (for the paired comparison of two models on
    /// its own patients): for the hospital only; never sent.
    fn keep_own_record(
        &self,
        round: u64,
        record: &SiteValidation,
        scores: &[PatientScore],
    ) -> anyhow::Result<()> {
        let folder = self.config.work_dir.join(OWN_RECORDS_DIR);
        std::fs::create_dir_all(&folder).with_context(|| format!("cannot create {}", folder.display()))?;
        write_atomically(
            &scores_file(&self.config.work_dir, round),
            &serde_json::to_vec(scores)?,
        )?;
        let bytes = serde_json::to_vec(record)?;
        write_atomically(&folder.join(format!("round-{round:04}.json")), &bytes)?;
        Ok(())
    }
}

/// The seed of a site's AdaBN shuffles in round `round`.
#[must_use]
pub fn adapt_seed(site: &str, round: u64) -> u64 {
    seed_of(site) ^ round
}

/// A stable per-site seed offset (sites must not shuffle identically).
fn seed_of(site: &str) -> u64 {
    site.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sites_shuffle_their_adaptation_differently_each_round() {
        assert_ne!(adapt_seed("S1", 1), adapt_seed("S2", 1));
        assert_ne!(adapt_seed("S1", 1), adapt_seed("S1", 2));
    }
}
