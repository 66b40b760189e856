//! `fedlnm-node quality`: the model's quality check on synthetic data in one command. Generates three
//! training sites (tertiary, community and rural profiles) and one external site (rural profile, never
//! trained on), trains each modality centrally on the pooled training sites (20% held out for early
//! stopping), scores the external site, and compares the result with the generator's oracle AUC on the
//! same patients and the modalities with one another by the paired DeLong test. Writes `quality.md`
//! (printed too) and `quality.json`.

use super::model::{self, ComputeArgs, EvaluationJob, TrainJob};
use anyhow::{Context as _, bail};
use clap::Args;
use fedlnm_shared::config::ComputeDevice;
use fedlnm_shared::model_config::{ConfigFile, Modality};
use fedlnm_shared::stats::binary::{PairedDelong, paired_delong};
use fedlnm_shared::synth::{self, OutputFormat, SiteProfile, SynthConfig, SynthSummary};
use serde::Serialize;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

/// The default model and training plan of the quality check (also `configs/model-quality.toml`).
pub const DEFAULT_CONFIG: &str = include_str!("../../../configs/model-quality.toml");

/// Arguments of `quality`.
#[derive(Debug, Args)]
pub struct QualityArgs {
    /// Output folder (created; must be empty): data/, one folder per modality, quality.md, quality.json.
    #[arg(long, default_value = "quality")]
    pub out: PathBuf,
    /// Patients of each of the three training sites.
    #[arg(long, default_value_t = 2000)]
    pub patients: usize,
    /// Patients of the external validation site.
    #[arg(long, default_value_t = 500)]
    pub external_patients: usize,
    /// Model and training config (TOML with [model] and [train]); its modality is replaced by each of
    /// --modalities. Default: configs/model-quality.toml.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Modalities to train and compare; the first is the reference of the paired DeLong tests.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "multimodal,image-only,report-only"
    )]
    pub modalities: Vec<String>,
    /// Side of the generated pictures in pixels (the model resizes them to its input size).
    #[arg(long, default_value_t = 128)]
    pub image_size: u32,
    /// Data seed: the sites use seeds SEED..SEED+3.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[command(flatten)]
    pub compute: ComputeArgs,
}

/// One modality's result on the external site.
#[derive(Debug, Clone, Serialize)]
pub struct ModalityResult {
    pub modality: Modality,
    pub n_parameters: usize,
    pub training_seconds: f64,
    pub best_epoch: usize,
    pub epochs_run: usize,
    pub internal_validation_auc: Option<f64>,
    pub auc: f64,
    pub auc_ci: (f64, f64),
    pub youden_sensitivity: Option<f64>,
    pub youden_specificity: Option<f64>,
    /// Quadratic-weighted kappa of predicted vs pathological T, N and AJCC stage.
    pub kappa_t: Option<f64>,
    pub kappa_n: Option<f64>,
    pub kappa_stage: Option<f64>,
    /// The generator's oracle AUC for what this modality sees, and the gap to it.
    pub oracle_auc: f64,
    pub gap_to_oracle: f64,
    /// Paired DeLong test of the reference modality (a) against this one (b): Δ = AUC(a) − AUC(b).
    /// Absent for the reference itself.
    pub vs_reference: Option<PairedDelong>,
}

/// `quality.json`.
#[derive(Debug, Clone, Serialize)]
pub struct QualityReport {
    pub training_sites: Vec<SynthSummary>,
    pub external_site: SynthSummary,
    pub config: ConfigFile,
    pub results: Vec<ModalityResult>,
    /// The reference modality is within 0.03 of the generator's multimodal oracle AUC.
    pub target_met: bool,
    pub seconds: f64,
}

/// The largest acceptable gap between the model's external AUC and the oracle's (issue 5).
pub const ORACLE_TOLERANCE: f64 = 0.03;

/// Runs `quality`.
pub fn run(args: &QualityArgs) -> anyhow::Result<()> {
    let (report, markdown) = quality(args)?;
    println!("{markdown}");
    if !report.target_met {
        tracing::warn!("the reference modality is more than {ORACLE_TOLERANCE} below the oracle AUC");
    }
    Ok(())
}

/// The quality check (see the module doc): the report and its markdown (both also written to --out).
///
/// # Errors
/// A non-empty output folder, an unknown modality, an unusable config, or a failed step (named).
pub fn quality(args: &QualityArgs) -> anyhow::Result<(QualityReport, String)> {
    let started = Instant::now();
    let modalities = args
        .modalities
        .iter()
        .map(|name| {
            serde_json::from_value::<Modality>(serde_json::Value::String(name.clone())).with_context(|| {
                format!("unknown modality '{name}' (known: multimodal, image-only, report-only)")
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if modalities.is_empty() {
        bail!("--modalities names no modality");
    }
    let base = match &args.config {
        Some(file) => ConfigFile::read(file)?,
        None => toml::from_str(DEFAULT_CONFIG).context("the built-in quality config")?,
    };
    base.train.validate()?;
    super::create_output_dir(&args.out, "the quality check")?;
    let device = args.compute.prepare();

    let profiles = ["tertiary", "community", "rural", "rural"];
    let mut summaries = Vec::new();
    let mut site_dirs = Vec::new();
    for (k, profile) in profiles.iter().enumerate() {
        let external = k == profiles.len() - 1;
        let config = SynthConfig {
            site: format!("S{}", k + 1),
            n_patients: if external {
                args.external_patients
            } else {
                args.patients
            },
            seed: args.seed + k as u64,
            profile: SiteProfile::named(profile).with_context(|| format!("unknown profile {profile}"))?,
            format: OutputFormat::Png,
            image_size: args.image_size,
        };
        let dir = args.out.join("data").join(&config.site);
        tracing::info!(site = %config.site, profile, patients = config.n_patients, "generating site");
        summaries.push(
            synth::write_site(&config, &dir).with_context(|| format!("generating site {}", config.site))?,
        );
        site_dirs.push(dir);
    }
    let external_dir = site_dirs.pop().context("four sites")?;
    let external_site = summaries.pop().context("four sites")?;

    let mut results: Vec<ModalityResult> = Vec::new();
    let mut reference_scores: Option<(Vec<bool>, Vec<f64>)> = None;
    for &modality in &modalities {
        let mut config = base.clone();
        config.model.modality = modality;
        config.model.report_supervision &= modality.uses_image();
        config.model.validate()?;
        let name = modality.name();
        let dir = args.out.join(name);
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        // A record of what this modality trained with (the model folder has it too, as model.toml).
        let config_file = dir.join("config.toml");
        std::fs::write(&config_file, config.to_toml())
            .with_context(|| format!("cannot write {}", config_file.display()))?;
        tracing::info!(modality = name, "training on the pooled training sites");
        let trained = model::train_model(&TrainJob {
            config,
            data: site_dirs.clone(),
            out: dir.join("model"),
            val_fraction: 0.2,
            init: None,
            device,
        })?;
        let evaluated = model::evaluate_site(&EvaluationJob {
            checkpoint: trained.checkpoint.clone(),
            data: external_dir.clone(),
            out: dir.join("external"),
            device,
            adapt_normalisation: false,
            compare_with: Vec::new(),
        })?
        .context("the external site has no labelled patient")?;
        let lnm = &evaluated.report.lnm;
        let (Some(auc), Some(lower), Some(upper)) = (lnm.auc, lnm.auc_ci_lower, lnm.auc_ci_upper) else {
            bail!("the external site has a single LNM class: no AUC");
        };
        let oracle = &external_site.oracle_auc;
        let oracle_auc = match modality {
            Modality::Multimodal => oracle.multimodal,
            Modality::ImageOnly => oracle.image,
            Modality::ReportOnly => oracle.report_clinical,
        };
        let vs_reference = match &reference_scores {
            None => None,
            Some((y, reference)) => {
                if *y != evaluated.lnm_true {
                    bail!("the external site's patients differ between modalities");
                }
                paired_delong(y, reference, &evaluated.lnm_score)?
            }
        };
        if reference_scores.is_none() {
            reference_scores = Some((evaluated.lnm_true.clone(), evaluated.lnm_score.clone()));
        }
        let quadratic = |kappa: &fedlnm_shared::stats::kappa::KappaReport| kappa.quadratic.kappa;
        results.push(ModalityResult {
            modality,
            n_parameters: trained.n_parameters,
            training_seconds: trained.seconds,
            best_epoch: trained.best_epoch,
            epochs_run: trained.epochs_run,
            internal_validation_auc: trained.best_val_auc,
            auc,
            auc_ci: (lower, upper),
            youden_sensitivity: lnm.youden_sensitivity,
            youden_specificity: lnm.youden_specificity,
            kappa_t: quadratic(&evaluated.report.t_kappa),
            kappa_n: quadratic(&evaluated.report.n_kappa),
            kappa_stage: quadratic(&evaluated.report.stage_kappa),
            oracle_auc,
            gap_to_oracle: oracle_auc - auc,
            vs_reference,
        });
    }
    let target_met =
        results[0].modality == Modality::Multimodal && results[0].gap_to_oracle <= ORACLE_TOLERANCE;
    let report = QualityReport {
        training_sites: summaries,
        external_site,
        config: base,
        results,
        target_met,
        seconds: started.elapsed().as_secs_f64(),
    };
    let json_file = args.out.join("quality.json");
    std::fs::write(&json_file, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("cannot write {}", json_file.display()))?;
    let markdown = markdown(&report, device);
    let file = args.out.join("quality.md");
    std::fs::write(&file, &markdown).with_context(|| format!("cannot write {}", file.display()))?;
    Ok((report, markdown))
}

/// `quality.md`: the setting, one row per modality, and whether the oracle target is met.
fn markdown(report: &QualityReport, device: ComputeDevice) -> String {
    let model = &report.config.model;
    let plan = &report.config.train;
    let n_train: usize = report.training_sites.iter().map(|s| s.n_patients).sum();
    let external = &report.external_site;
    let mut text = String::new();
    let _ = writeln!(text, "# Model quality on synthetic data\n");
    let _ = writeln!(
        text,
        "Trained centrally on {} pooled training sites ({n_train} patients: {}; 20% held out for early \
         stopping), validated on the external site {} ({} profile, {} patients, LNM rate {:.1}%, never \
         trained on). Model: {:?} ResNet, base width {}, {} px input{}; up to {} epochs (patience {}), \
         batch {}, AdamW peak learning rate {}; device {}; {} in all.\n",
        report.training_sites.len(),
        report
            .training_sites
            .iter()
            .map(|s| format!("{} {} seed {}", s.site, s.profile.name, s.seed))
            .collect::<Vec<_>>()
            .join(", "),
        external.site,
        external.profile.name,
        external.n_patients,
        100.0 * external.lnm_rate,
        model.image.variant,
        model.image.base_width,
        model.image.input_size,
        if model.report_supervision {
            ", report supervision of the image branch"
        } else {
            ""
        },
        plan.epochs,
        plan.patience,
        plan.batch_size,
        plan.learning_rate,
        match device {
            ComputeDevice::Cpu => "CPU",
            ComputeDevice::Cuda => "CUDA",
        },
        duration(report.seconds),
    );
    let _ = writeln!(
        text,
        "| modality | parameters | external AUC (95% CI) | oracle AUC | gap | Youden sens / spec | quadratic \
         kappa T / N / stage | Δ AUC vs {}, paired DeLong | best / run epochs | training time |",
        report.results[0].modality.name()
    );
    let _ = writeln!(text, "|---|---:|---|---:|---:|---|---|---|---|---:|");
    for r in &report.results {
        let comparison = r.vs_reference.as_ref().map_or_else(String::new, |c| {
            format!(
                "{:+.3} (SE {}), p {}",
                -c.delta,
                c.se.map_or_else(|| "n/a".to_owned(), |se| format!("{se:.3}")),
                c.p.map_or_else(|| "n/a".to_owned(), format_p)
            )
        });
        let _ = writeln!(
            text,
            "| {} | {} | {:.3} ({:.3}–{:.3}) | {:.3} | {:.3} | {} / {} | {} / {} / {} | {} | {} / {} | {} |",
            r.modality.name(),
            r.n_parameters,
            r.auc,
            r.auc_ci.0,
            r.auc_ci.1,
            r.oracle_auc,
            r.gap_to_oracle,
            three(r.youden_sensitivity),
            three(r.youden_specificity),
            three(r.kappa_t),
            three(r.kappa_n),
            three(r.kappa_stage),
            comparison,
            r.best_epoch,
            r.epochs_run,
            duration(r.training_seconds),
        );
    }
    let reference = &report.results[0];
    let _ = writeln!(
        text,
        "\nTarget (external AUC of the multimodal model within {ORACLE_TOLERANCE} of the oracle): **{}** \
         (gap {:.3}). Oracle AUCs are the generator's own probability (multimodal), its image-borne part \
         at the true values (image-only) and its value on what the report and clinical fields say \
         (report-only), on the same external patients.",
        if report.target_met { "met" } else { "not met" },
        reference.gap_to_oracle
    );
    text
}

fn duration(seconds: f64) -> String {
    if seconds < 90.0 {
        format!("{seconds:.0} s")
    } else {
        format!("{:.1} min", seconds / 60.0)
    }
}

fn three(value: Option<f64>) -> String {
    value.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.3}"))
}

fn format_p(p: f64) -> String {
    if p < 1e-4 {
        "< 0.0001".to_owned()
    } else {
        format!("{p:.4}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_config_is_the_documented_one_and_valid() {
        let config: ConfigFile = toml::from_str(DEFAULT_CONFIG).unwrap();
        config.model.validate().unwrap();
        config.train.validate().unwrap();
        assert_eq!(config.model.modality, Modality::Multimodal);
        assert!(config.model.report_supervision);
        assert_eq!(
            (
                config.model.image.base_width,
                config.model.image.input_size,
                config.train.epochs
            ),
            (16, 64, 20)
        );
    }

    #[test]
    fn durations_read_in_seconds_then_minutes() {
        assert_eq!(duration(2.2), "2 s");
        assert_eq!(duration(1208.2), "20.1 min");
    }
}
