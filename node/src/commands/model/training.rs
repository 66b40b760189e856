//! Central training on one or more site folders: pool, split, train, and write the checkpoint, the
//! config and the training log.

use super::examples::load_examples;
use super::progress::ProgressReporter;
use anyhow::Context as _;
use fedlnm_model::train;
use fedlnm_shared::checkpoint::{Checkpoint, write as write_checkpoint};
use fedlnm_shared::config::ComputeDevice;
use fedlnm_shared::data;
use fedlnm_shared::model_config::ConfigFile;
use std::path::PathBuf;
use std::time::Instant;

/// File names inside a training output folder.
pub const CHECKPOINT_FILE: &str = "model.safetensors";
pub const CONFIG_FILE: &str = "model.toml";
pub const LOG_FILE: &str = "training.json";

/// One central training run, as plain data (what `train` builds from its command line).
#[derive(Debug, Clone)]
pub struct TrainJob {
    /// The model and its training plan (validated by [`train_model`]).
    pub config: ConfigFile,
    /// Site folders with patients.csv and images/; several are pooled (ids become `site/id`).
    pub data: Vec<PathBuf>,
    /// Output folder (created): [`CHECKPOINT_FILE`], [`CONFIG_FILE`], [`LOG_FILE`].
    pub out: PathBuf,
    /// Fraction of patients (stratified by LNM) held out for validation and early stopping.
    pub val_fraction: f64,
    /// A checkpoint whose weights to start from instead of a fresh initialisation.
    pub init: Option<PathBuf>,
    /// Where to train; for CUDA, prepared with [`super::prepare_device`] to keep its autotune cache.
    pub device: ComputeDevice,
}

/// What a training run produced.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub n_parameters: usize,
    pub n_train: usize,
    pub n_validation: usize,
    pub best_epoch: usize,
    pub epochs_run: usize,
    pub best_val_auc: Option<f64>,
    pub seconds: f64,
    /// The checkpoint written (`out/model.safetensors`).
    pub checkpoint: PathBuf,
}

/// Loads and pools the sites, splits, trains, writes the checkpoint, config and log into `job.out`.
///
/// # Errors
/// An invalid config, an unusable site folder or checkpoint, too few patients, a device this build
/// cannot use, or an output file that cannot be written (named).
pub fn train_model(job: &TrainJob) -> anyhow::Result<TrainSummary> {
    job.config.model.validate()?;
    job.config.train.validate()?;
    let model = &job.config.model;
    let plan = &job.config.train;
    let pooled = job.data.len() > 1;
    let mut examples = Vec::new();
    for dir in &job.data {
        examples.extend(load_examples(dir, model, true, pooled)?.examples);
    }
    let labels: Vec<bool> = examples
        .iter()
        .map(|e| e.targets.is_some_and(|t| t.lnm))
        .collect();
    let split = data::stratified_split(&labels, job.val_fraction, plan.seed)?;
    let pick = |indices: &[usize]| indices.iter().map(|&i| examples[i].clone()).collect::<Vec<_>>();
    let (train_set, validation_set) = (pick(&split.train), pick(&split.validation));
    tracing::info!(
        train = train_set.len(),
        validation = validation_set.len(),
        digest = %model.digest(),
        "training {:?} {:?} at {} px",
        model.modality,
        model.image.variant,
        model.image.input_size
    );
    let initial = match &job.init {
        Some(file) => Checkpoint::read(file)?.weights,
        None => train::initial_weights(model, plan.seed),
    };
    let started = Instant::now();
    let mut reporter = ProgressReporter::new();
    let outcome = train::train_local(
        job.device,
        model,
        &initial,
        &train_set,
        &validation_set,
        plan,
        &mut |event| reporter.report(event),
    )?;
    reporter.finish();
    let seconds = started.elapsed().as_secs_f64();
    let out = &job.out;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let checkpoint = out.join(CHECKPOINT_FILE);
    write_checkpoint(&checkpoint, model, &outcome.weights)?;
    std::fs::write(out.join(CONFIG_FILE), job.config.to_toml())
        .with_context(|| format!("cannot write {}", out.join(CONFIG_FILE).display()))?;
    let summary = TrainSummary {
        n_parameters: outcome.weights.n_values(),
        n_train: outcome.n_samples,
        n_validation: validation_set.len(),
        best_epoch: outcome.best_epoch,
        epochs_run: outcome.history.len(),
        best_val_auc: outcome
            .history
            .get(outcome.best_epoch.wrapping_sub(1))
            .and_then(|e| e.val_auc),
        seconds,
        checkpoint,
    };
    let log = serde_json::json!({
        "config_digest": model.digest(),
        "n_parameters": summary.n_parameters,
        "n_train": summary.n_train,
        "n_validation": summary.n_validation,
        "best_epoch": summary.best_epoch,
        "best_val_auc": summary.best_val_auc,
        "seconds": seconds,
        // "Cpu" or "Cuda", as training.json has always said.
        "device": format!("{:?}", job.device),
        "epochs": outcome.history,
    });
    std::fs::write(out.join(LOG_FILE), serde_json::to_string_pretty(&log)?)
        .with_context(|| format!("cannot write {}", out.join(LOG_FILE).display()))?;
    tracing::info!(best_epoch = outcome.best_epoch, seconds, out = %out.display(), "training done");
    Ok(summary)
}
