//! `fedlnm-node train | evaluate | explain | bench`: central training on one or more site folders,
//! evaluation with the statistics engine, Grad-CAM overlays, and the training speed benchmark.
//!
//! This file holds the command lines and turns each into a plain job ([`TrainJob`], [`EvaluationJob`],
//! [`ExplainJob`]) for the module that does it; other commands (`quality`) build those jobs directly.
//! The backend is named here once, from `--device`; everything else is plain data.

mod benchmark;
mod device;
mod evaluation;
mod examples;
mod gradcam;
mod progress;
mod training;

pub use device::{default_autotune_cache_dir, device_parser, prepare_autotune_cache, prepare_device};
pub use evaluation::{EvaluationJob, EvaluationSummary, evaluate_site};
pub use examples::{LoadedExamples, load_examples};
pub use fedlnm_shared::checkpoint::write as write_checkpoint;
pub use gradcam::{ExplainJob, explain_patients};
pub use training::{CHECKPOINT_FILE, CONFIG_FILE, LOG_FILE, TrainJob, TrainSummary, train_model};

use clap::Args;
use fedlnm_shared::config::ComputeDevice;
use fedlnm_shared::model_config::{ConfigFile, ModelConfig, TrainPlan};
use std::path::PathBuf;

/// Where the model runs, and where CUDA keeps its autotune results (shared by `train`, `evaluate`,
/// `explain`, `bench` and `quality`).
#[derive(Debug, Clone, Args)]
pub struct ComputeArgs {
    #[arg(long, value_parser = device_parser(), default_value_t = ComputeDevice::Cpu)]
    pub device: ComputeDevice,
    /// With `--device cuda`: the folder that keeps cubecl's kernel autotune results between runs
    /// [default: $XDG_CACHE_HOME/fedlnm/cubecl-autotune, else ~/.cache/fedlnm/cubecl-autotune, else
    /// ./.fedlnm-autotune].
    #[arg(long, value_name = "DIR")]
    pub autotune_cache: Option<PathBuf>,
}

impl ComputeArgs {
    /// The device, its autotune cache prepared (see [`prepare_device`]).
    #[must_use]
    pub fn prepare(&self) -> ComputeDevice {
        prepare_device(self.device, self.autotune_cache.as_deref())
    }
}

/// Arguments of `train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Site folder(s) with patients.csv and images/ (several are pooled).
    #[arg(long, required = true)]
    pub data: Vec<PathBuf>,
    /// Output folder: model.safetensors, model.toml, training.json.
    #[arg(long)]
    pub out: PathBuf,
    /// Model and training config (TOML with [model] and [train]); default: ResNet-18 at 224 px.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Fraction of patients (stratified by LNM) held out for validation and early stopping.
    #[arg(long, default_value_t = 0.2)]
    pub val_fraction: f64,
    /// Start from this checkpoint's weights instead of a fresh initialisation.
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Override the config's number of epochs.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Override the config's seed (initialisation, split, shuffling, augmentation).
    #[arg(long)]
    pub seed: Option<u64>,
    #[command(flatten)]
    pub compute: ComputeArgs,
}

/// Arguments of `evaluate`.
#[derive(Debug, Args)]
pub struct EvaluateArgs {
    /// Site folder to score.
    #[arg(long)]
    pub data: PathBuf,
    /// A checkpoint written by `train` (its config is stored inside).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Output folder: predictions.csv and metrics.json.
    #[arg(long)]
    pub out: PathBuf,
    /// First re-estimate the model's normalisation statistics on this site's own pictures (AdaBN; no
    /// label is read), as a study with `normalisation_statistics = "site"` scores at every site.
    #[arg(long)]
    pub adapt_normalisation: bool,
    /// Another model's predictions.csv on the same site (from `evaluate` or `quality`): the paired
    /// DeLong test of this model against it on the labelled patients, matched by patient id, in
    /// metrics.json ("versus"; Δ = this model's AUC minus that one's). Repeat for several.
    #[arg(long, value_name = "PREDICTIONS_CSV")]
    pub compare_with: Vec<PathBuf>,
    #[command(flatten)]
    pub compute: ComputeArgs,
}

/// Arguments of `explain`.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Pseudonymous patient ids, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub patients: Vec<String>,
    /// Output folder: one `<id>_gradcam.png` per patient.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub compute: ComputeArgs,
}

/// Arguments of `bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Configurations as VARIANT@SIZE (variants: tiny, resnet18, resnet34, resnet50, resnet101).
    #[arg(long, value_delimiter = ',', default_value = "tiny@64,resnet18@224")]
    pub models: Vec<String>,
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Timed steps per configuration (after one warm-up step).
    #[arg(long, default_value_t = 3)]
    pub steps: usize,
    #[command(flatten)]
    pub compute: ComputeArgs,
}

/// `train`: the config file (or the default ResNet-18 at 224 px) with the command line's overrides,
/// trained by [`train_model`].
pub fn train(args: &TrainArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(file) => ConfigFile::read(file)?,
        None => ConfigFile {
            model: ModelConfig::resnet18(),
            train: TrainPlan::default(),
        },
    };
    if let Some(epochs) = args.epochs {
        config.train.epochs = epochs;
    }
    if let Some(seed) = args.seed {
        config.train.seed = seed;
    }
    train_model(&TrainJob {
        config,
        data: args.data.clone(),
        out: args.out.clone(),
        val_fraction: args.val_fraction,
        init: args.init.clone(),
        device: args.compute.prepare(),
    })?;
    Ok(())
}

/// `evaluate`: predictions CSV and the metrics JSON of the statistics engine ([`evaluate_site`]).
pub fn evaluate(args: &EvaluateArgs) -> anyhow::Result<()> {
    evaluate_site(&EvaluationJob {
        checkpoint: args.checkpoint.clone(),
        data: args.data.clone(),
        out: args.out.clone(),
        device: args.compute.prepare(),
        adapt_normalisation: args.adapt_normalisation,
        compare_with: args.compare_with.clone(),
    })?;
    Ok(())
}

/// `explain`: Grad-CAM overlays of the image branch for the chosen patients ([`explain_patients`]).
pub fn explain(args: &ExplainArgs) -> anyhow::Result<()> {
    explain_patients(&ExplainJob {
        checkpoint: args.checkpoint.clone(),
        data: args.data.clone(),
        patients: args.patients.clone(),
        out: args.out.clone(),
        device: args.compute.prepare(),
    })?;
    Ok(())
}

/// `bench`: training and inference images/s per configuration, as a markdown table on stdout.
pub fn bench(args: &BenchArgs) -> anyhow::Result<()> {
    benchmark::print_bench_table(args.compute.prepare(), &args.models, args.batch, args.steps)
}
