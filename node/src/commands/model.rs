//! `fedlnm-node train | evaluate | explain | bench`: central training on one or more site folders,
//! evaluation with the statistics engine, Grad-CAM overlays, and the training speed benchmark.
//!
//! The backend is chosen here once, from `--device`; everything else is plain data.

use anyhow::{Context as _, bail};
use clap::Args;
use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use fedlnm_shared::config::ComputeDevice;
use fedlnm_shared::data::{self, LoadOptions, Preprocess};
use fedlnm_shared::evaluation;
use fedlnm_shared::features::{Example, encode_patient};
use fedlnm_shared::model_config::{ConfigFile, ModelConfig, ResNetVariant, TrainPlan};
use fedlnm_shared::staging::Stage;
use fedlnm_shared::train::{self, TrainingEvent};
use fedlnm_shared::weights::NamedTensors;
use std::ffi::OsString;
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// File names inside a training output folder.
pub const CHECKPOINT_FILE: &str = "model.safetensors";
pub const CONFIG_FILE: &str = "model.toml";
pub const LOG_FILE: &str = "training.json";

/// The parser of a `--device` argument: "cpu" or "cuda", each listed with a line in `--help`.
#[must_use]
pub fn device_parser() -> impl TypedValueParser<Value = ComputeDevice> {
    PossibleValuesParser::new(
        ComputeDevice::ALL.map(|device| PossibleValue::new(device.name()).help(device_help(device))),
    )
    .try_map(|name| name.parse::<ComputeDevice>())
}

/// Where the model runs, and where CUDA keeps its autotune results (shared by `train`, `evaluate`,
/// `explain` and `bench`).
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
    /// The device, after pointing cubecl's autotune cache at its folder when it is CUDA (before any
    /// CUDA work). A cache that cannot be set is logged and skipped: it only saves time.
    pub fn prepare(&self) -> ComputeDevice {
        if self.device == ComputeDevice::Cuda {
            let dir = self.autotune_cache.clone().unwrap_or_else(|| {
                default_autotune_cache_dir(std::env::var_os("XDG_CACHE_HOME"), std::env::var_os("HOME"))
            });
            prepare_autotune_cache(&dir);
        }
        self.device
    }
}

/// Points cubecl's autotune cache at `dir` (see [`train::use_autotune_cache`]); on failure, a warning:
/// the run goes on (tuning what the cache cubecl already uses does not hold).
pub fn prepare_autotune_cache(dir: &Path) {
    match train::use_autotune_cache(dir) {
        // Without the `cuda` feature nothing was set (and `--device cuda` fails next, saying why).
        Ok(()) if cfg!(feature = "cuda") => tracing::info!(dir = %dir.display(), "CUDA autotune cache"),
        Ok(()) => {}
        Err(error) => tracing::warn!(%error, "CUDA autotune cache folder not used"),
    }
}

/// The per-user default of `--autotune-cache`, from the values of `XDG_CACHE_HOME` and `HOME`: the XDG
/// cache folder when set to an absolute path (the XDG rule), else `~/.cache`, else the working
/// directory's `.fedlnm-autotune`.
#[must_use]
pub fn default_autotune_cache_dir(xdg_cache_home: Option<OsString>, home: Option<OsString>) -> PathBuf {
    let absolute = |value: Option<OsString>| value.map(PathBuf::from).filter(|path| path.is_absolute());
    if let Some(cache) = absolute(xdg_cache_home) {
        cache.join("fedlnm").join("cubecl-autotune")
    } else if let Some(home) = absolute(home) {
        home.join(".cache").join("fedlnm").join("cubecl-autotune")
    } else {
        PathBuf::from(".fedlnm-autotune")
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

/// What `train` produced.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub n_parameters: usize,
    pub n_train: usize,
    pub n_validation: usize,
    pub best_epoch: usize,
    pub epochs_run: usize,
    pub best_val_auc: Option<f64>,
    pub seconds: f64,
    pub checkpoint: PathBuf,
}

/// `train`: loads and pools the sites, splits, trains, writes the checkpoint, config and log.
pub fn train(args: &TrainArgs) -> anyhow::Result<()> {
    train_model(args).map(|_| ())
}

/// [`train`], returning what it wrote.
pub fn train_model(args: &TrainArgs) -> anyhow::Result<TrainSummary> {
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
    config.train.validate()?;
    let model = &config.model;
    let plan = &config.train;
    let pooled = args.data.len() > 1;
    let mut examples = Vec::new();
    for dir in &args.data {
        examples.extend(load_examples(dir, model, true, pooled)?.0);
    }
    let labels: Vec<bool> = examples
        .iter()
        .map(|e| e.targets.is_some_and(|t| t.lnm))
        .collect();
    let split = data::stratified_split(&labels, args.val_fraction, plan.seed)?;
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
    let initial = match &args.init {
        Some(file) => read_checkpoint(file)?.1,
        None => train::initial_weights(model, plan.seed),
    };
    let device = args.compute.prepare();
    let started = Instant::now();
    let mut reporter = ProgressReporter::new();
    let outcome = train::train_local(
        device,
        model,
        &initial,
        &train_set,
        &validation_set,
        plan,
        &mut |event| reporter.report(event),
    )?;
    reporter.finish();
    let seconds = started.elapsed().as_secs_f64();
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    let checkpoint = args.out.join(CHECKPOINT_FILE);
    write_checkpoint(&checkpoint, model, &outcome.weights)?;
    std::fs::write(args.out.join(CONFIG_FILE), config.to_toml())
        .with_context(|| format!("cannot write {}", args.out.join(CONFIG_FILE).display()))?;
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
        "device": format!("{:?}", args.compute.device),
        "epochs": outcome.history,
    });
    std::fs::write(args.out.join(LOG_FILE), serde_json::to_string_pretty(&log)?)
        .with_context(|| format!("cannot write {}", args.out.join(LOG_FILE).display()))?;
    tracing::info!(best_epoch = outcome.best_epoch, seconds, out = %args.out.display(), "training done");
    Ok(summary)
}

/// What `evaluate` computed for the labelled patients (`None` when no patient is labelled).
#[derive(Debug, Clone)]
pub struct EvaluationSummary {
    pub report: evaluation::EvaluationReport,
    /// The labelled patients' LNM truth and predicted probability, in file order.
    pub lnm_true: Vec<bool>,
    pub lnm_score: Vec<f64>,
}

/// `evaluate`: predictions CSV and the metrics JSON of the statistics engine.
pub fn evaluate(args: &EvaluateArgs) -> anyhow::Result<()> {
    evaluate_site(args).map(|_| ())
}

/// [`evaluate`], returning the metrics and the labelled patients' scores.
pub fn evaluate_site(args: &EvaluateArgs) -> anyhow::Result<Option<EvaluationSummary>> {
    let (config, weights) = read_checkpoint(&args.checkpoint)?;
    let (examples, stages) = load_examples(&args.data, &config, false, false)?;
    let predictions = train::predict(args.compute.prepare(), &config, &weights, &examples, 32)?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    let csv_file = args.out.join("predictions.csv");
    let mut writer =
        csv::Writer::from_path(&csv_file).with_context(|| format!("cannot write {}", csv_file.display()))?;
    writer.write_record([
        "patient_id",
        "lnm_score",
        "t_pred",
        "n_pred",
        "stage_pred",
        "lnm_true",
        "t_true",
        "n_true",
        "stage_true",
    ])?;
    for ((example, prediction), stage) in examples.iter().zip(&predictions).zip(&stages) {
        let truth = example.targets.map(|t| {
            [
                u8::from(t.lnm).to_string(),
                t.t.to_string(),
                t.n.to_string(),
                stage.map_or(String::new(), |s| s.code().to_string()),
            ]
        });
        let [lnm_true, t_true, n_true, stage_true] = truth.unwrap_or_default();
        writer.write_record([
            prediction.patient_id.clone(),
            format!("{:.6}", prediction.lnm_probability),
            prediction.t.code().to_string(),
            prediction.n.code().to_string(),
            prediction.stage.code().to_string(),
            lnm_true,
            t_true,
            n_true,
            stage_true,
        ])?;
    }
    writer.flush()?;
    let labelled: Vec<usize> = (0..examples.len())
        .filter(|&i| examples[i].targets.is_some())
        .collect();
    if labelled.is_empty() {
        tracing::warn!("no labelled patients: predictions written, no metrics");
        return Ok(None);
    }
    let pick = |i: &usize| examples[*i].clone();
    let labelled_examples: Vec<Example> = labelled.iter().map(pick).collect();
    let labelled_predictions: Vec<_> = labelled.iter().map(|&i| predictions[i].clone()).collect();
    let labelled_stages: Vec<Stage> = labelled.iter().filter_map(|&i| stages[i]).collect();
    let report = evaluation::evaluate(&labelled_examples, &labelled_predictions, &labelled_stages)?;
    let metrics = serde_json::json!({
        "checkpoint": args.checkpoint.display().to_string(),
        "config_digest": config.digest(),
        "metrics": report,
    });
    let metrics_file = args.out.join("metrics.json");
    std::fs::write(&metrics_file, serde_json::to_string_pretty(&metrics)?)
        .with_context(|| format!("cannot write {}", metrics_file.display()))?;
    tracing::info!(
        n = report.n_patients,
        auc = report.lnm.auc,
        "evaluation written to {}",
        args.out.display()
    );
    Ok(Some(EvaluationSummary {
        report,
        lnm_true: labelled_examples
            .iter()
            .map(|e| e.targets.is_some_and(|t| t.lnm))
            .collect(),
        lnm_score: labelled_predictions.iter().map(|p| p.lnm_probability).collect(),
    }))
}

/// `explain`: Grad-CAM overlays of the image branch for the chosen patients.
pub fn explain(args: &ExplainArgs) -> anyhow::Result<()> {
    let (config, weights) = read_checkpoint(&args.checkpoint)?;
    if !config.modality.uses_image() {
        bail!(
            "the checkpoint's model ({:?}) has no image branch to explain",
            config.modality
        );
    }
    let (examples, _) = load_examples(&args.data, &config, false, false)?;
    let mut chosen = Vec::new();
    for id in &args.patients {
        let example = examples.iter().find(|e| &e.patient_id == id).with_context(|| {
            format!(
                "patient '{id}' is not among the included patients of {}",
                args.data.display()
            )
        })?;
        chosen.push(example.clone());
    }
    let maps = train::grad_cam(args.compute.prepare(), &config, &weights, &chosen)?.unwrap_or_default();
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    let size = config.image.input_size;
    for (example, map) in chosen.iter().zip(&maps) {
        let overlay = overlay(&example.inputs.image, map, size);
        let file = args
            .out
            .join(format!("{}_gradcam.png", sanitize(&example.patient_id)));
        overlay
            .save(&file)
            .with_context(|| format!("cannot write {}", file.display()))?;
        tracing::info!(patient = %example.patient_id, file = %file.display(), "Grad-CAM written");
    }
    Ok(())
}

/// `bench`: training and inference images/s per configuration, as a markdown table on stdout.
pub fn bench(args: &BenchArgs) -> anyhow::Result<()> {
    let device = args.compute.prepare();
    println!("| model | input | batch | parameters | train img/s | inference img/s | train / inference |");
    println!("|---|---|---|---|---|---|---|");
    for spec in &args.models {
        let (variant, size) = parse_model_spec(spec)?;
        let mut config = ModelConfig::resnet18();
        config.image.variant = variant;
        config.image.input_size = size;
        if variant == ResNetVariant::Tiny {
            config = ModelConfig {
                image: config.image,
                ..ModelConfig::tiny(config.modality)
            };
            config.image.base_width = 8;
        }
        let result = train::bench(device, &config, args.batch, args.steps)?;
        println!(
            "| {spec} | {size}×{size} | {} | {} | {:.2} | {:.2} | {:.2} |",
            args.batch,
            result.n_parameters,
            result.train_images_per_second,
            result.inference_images_per_second,
            result.train_images_per_second / result.inference_images_per_second,
        );
    }
    Ok(())
}

/// Loads a site and encodes its patients for `config`; with `prefix`, ids become `site/id` (pooling).
/// Returns the examples and each one's pathological stage (when labelled).
pub fn load_examples(
    dir: &Path,
    config: &ModelConfig,
    require_labels: bool,
    prefix: bool,
) -> anyhow::Result<(Vec<Example>, Vec<Option<Stage>>)> {
    let site = dir
        .file_name()
        .map_or_else(|| "site".to_owned(), |name| name.to_string_lossy().into_owned());
    let options = LoadOptions {
        preprocess: Preprocess {
            size: config.image.input_size,
            ..Preprocess::default()
        },
        require_labels,
    };
    let site_data = data::load_site(&site, dir, &options)
        .with_context(|| format!("cannot load site folder {}", dir.display()))?;
    let mut examples = Vec::with_capacity(site_data.patients.len());
    let mut stages = Vec::with_capacity(site_data.patients.len());
    for patient in &site_data.patients {
        let mut example = encode_patient(
            patient,
            config.image.input_size,
            config.report.text_buckets,
            config.report.max_ngram,
        )?;
        if prefix {
            example.patient_id = format!("{site}/{}", example.patient_id);
        }
        stages.push(patient.record.labels.map(|labels| labels.stage));
        examples.push(example);
    }
    if examples.is_empty() {
        bail!(
            "no usable patient in {} ({} excluded)",
            dir.display(),
            site_data.exclusions.len()
        );
    }
    Ok((examples, stages))
}

/// Writes weights with the config (canonical JSON) and its digest in the safetensors metadata.
pub fn write_checkpoint(file: &Path, config: &ModelConfig, weights: &NamedTensors) -> anyhow::Result<()> {
    weights.save_safetensors(file, &config.checkpoint_metadata())?;
    Ok(())
}

/// Reads a checkpoint and its config; checks that the stored digest matches the stored config.
pub fn read_checkpoint(file: &Path) -> anyhow::Result<(ModelConfig, NamedTensors)> {
    let (weights, metadata) = NamedTensors::load_safetensors(file)?;
    let config = ModelConfig::from_checkpoint_metadata(&metadata)
        .with_context(|| format!("{} is not a usable fedlnm checkpoint", file.display()))?;
    Ok((config, weights))
}

fn parse_model_spec(spec: &str) -> anyhow::Result<(ResNetVariant, u32)> {
    let (variant, size) = spec
        .split_once('@')
        .with_context(|| format!("'{spec}': expected VARIANT@SIZE"))?;
    let variant: ResNetVariant = serde_json::from_value(serde_json::Value::String(variant.to_owned()))
        .with_context(|| {
            format!("'{variant}': unknown variant (tiny, resnet18, resnet34, resnet50, resnet101)")
        })?;
    let size = size
        .parse()
        .with_context(|| format!("'{size}': not a pixel size"))?;
    Ok((variant, size))
}

/// A progress bar on a terminal, one log line per epoch otherwise.
struct ProgressReporter {
    bar: Option<indicatif::ProgressBar>,
}

impl ProgressReporter {
    fn new() -> Self {
        Self { bar: None }
    }

    fn report(&mut self, event: &TrainingEvent) {
        match event {
            TrainingEvent::Step {
                step,
                total_steps,
                loss,
                epoch,
            } => {
                if std::io::stderr().is_terminal() {
                    let bar = self.bar.get_or_insert_with(|| {
                        let bar = indicatif::ProgressBar::new(*total_steps as u64);
                        if let Ok(style) = indicatif::ProgressStyle::with_template(
                            "{bar:40} {pos}/{len} steps, {elapsed} elapsed, ETA {eta} {msg}",
                        ) {
                            bar.set_style(style);
                        }
                        bar
                    });
                    bar.set_position(*step as u64);
                    bar.set_message(format!("epoch {epoch}, loss {loss:.4}"));
                }
            }
            TrainingEvent::Epoch(log) => {
                let findings = log
                    .train_findings_loss
                    .map_or_else(String::new, |loss| format!(", findings {loss:.4}"));
                let message = format!(
                    "epoch {}: loss {:.4} (LNM {:.4}, T {:.4}, N {:.4}{findings}), val AUC {}, {:.1} img/s",
                    log.epoch,
                    log.train_loss,
                    log.train_lnm_loss,
                    log.train_t_loss,
                    log.train_n_loss,
                    log.val_auc
                        .map_or_else(|| "n/a".to_owned(), |auc| format!("{auc:.3}")),
                    log.images_per_second
                );
                match &self.bar {
                    Some(bar) => bar.println(message),
                    None => tracing::info!("{message}"),
                }
            }
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// The image with the heat map blended in (red = high), as an RGB picture.
fn overlay(image: &[f32], map: &[f32], size: u32) -> image::RgbImage {
    let side = size as usize;
    let plane = side * side;
    image::RgbImage::from_fn(size, size, |x, y| {
        let i = y as usize * side + x as usize;
        let heat = map.get(i).copied().unwrap_or(0.0).clamp(0.0, 1.0);
        let colour = [heat, 1.0 - (2.0 * heat - 1.0).abs(), 1.0 - heat];
        let alpha = 0.45 * heat.sqrt();
        let channel = |c: usize| {
            let base = image.get(c * plane + i).copied().unwrap_or(0.0);
            // Within [0, 255] after the clamp: the cast is exact enough for a picture.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let value = (((1.0 - alpha) * base + alpha * colour[c]).clamp(0.0, 1.0) * 255.0).round() as u8;
            value
        };
        image::Rgb([channel(0), channel(1), channel(2)])
    })
}

/// The `--help` line of a device.
fn device_help(device: ComputeDevice) -> &'static str {
    match device {
        ComputeDevice::Cpu => "The CPU (burn Flex backend)",
        ComputeDevice::Cuda => "An NVIDIA GPU (needs a build with `--features cuda`)",
    }
}

/// A patient id made safe as a file name.
fn sanitize(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_autotune_cache_dir_follows_xdg_then_home_then_working_directory() {
        let cases: [(Option<&str>, Option<&str>, &str); 6] = [
            (Some("/xdg"), Some("/home/it"), "/xdg/fedlnm/cubecl-autotune"),
            (None, Some("/home/it"), "/home/it/.cache/fedlnm/cubecl-autotune"),
            // The XDG rule: a relative XDG_CACHE_HOME is ignored; so are empty values.
            (
                Some("relative"),
                Some("/home/it"),
                "/home/it/.cache/fedlnm/cubecl-autotune",
            ),
            (
                Some(""),
                Some("/home/it"),
                "/home/it/.cache/fedlnm/cubecl-autotune",
            ),
            (None, Some(""), ".fedlnm-autotune"),
            (None, None, ".fedlnm-autotune"),
        ];
        for (xdg, home, expected) in cases {
            assert_eq!(
                default_autotune_cache_dir(xdg.map(OsString::from), home.map(OsString::from)),
                PathBuf::from(expected),
                "XDG_CACHE_HOME={xdg:?} HOME={home:?}"
            );
        }
    }
}
