//! The command line of `fedlnm-node`, written for the hospital IT person who runs it.

use crate::commands;
use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::{Parser, Subcommand};
use fedlnm_shared::process::LogFormat;

/// fedlnm site node: runs inside a hospital, keeps every patient record local, and only ever dials out
/// to the study's aggregator.
#[derive(Debug, Parser)]
#[command(name = "fedlnm-node", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// How the log on standard error is written: `text` (the default; colours on a terminal only) or
    /// `json` (one object per line, for a log collector). Default: $FEDLNM_LOG_FORMAT, else text.
    #[arg(long, global = true, value_name = "FORMAT", value_parser = log_format_parser())]
    pub log_format: Option<LogFormat>,
    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Compute the study's statistics from a CSV file (AUC with CI, Youden sensitivity/specificity,
    /// weighted kappa, adjusted odds ratios). Prints one JSON object to standard output.
    #[command(subcommand)]
    Stats(commands::stats::StatsCommand),
    /// Generate a synthetic site (patients.csv, images/, synth_summary.json) from a named site profile,
    /// or a contact sheet of generated pictures (`synth contact-sheet`).
    Synth(commands::synth::SynthArgs),
    /// Check a site folder before the study starts: reads patients.csv and every image exactly as
    /// training will, and prints the patient flow (read, included, excluded by reason) and each
    /// excluded patient with the file, line and field at fault.
    CheckData(commands::check_data::CheckDataArgs),
    /// Check that this hospital can reach the study's aggregator with its startup kit: network path
    /// (outbound only), mutual TLS, certificate identity and study membership. Prints the site's role.
    CheckIn(commands::check_in::CheckInArgs),
    /// Take part in the study: connect to the aggregator (outbound only), train on this site's
    /// patients when asked, upload only the (masked) weight update, validate each new global model and
    /// report aggregate metrics. Runs until the study is finished; safe to stop and restart.
    Run(commands::federate::RunArgs),
    /// Write the study's initial global model (fresh weights of a model.toml) for the aggregator.
    InitModel(commands::federate::InitModelArgs),
    /// Train the LNM model centrally on one or more site folders (pooled); writes the checkpoint
    /// (safetensors), the config and the training log.
    Train(commands::model::TrainArgs),
    /// Score a site folder with a checkpoint: predictions CSV and the study's metrics JSON (AUC with
    /// CI, Youden sensitivity/specificity, Brier, calibration, kappa for T, N and stage).
    Evaluate(commands::model::EvaluateArgs),
    /// Grad-CAM overlays (PNG) of the image branch for chosen patients.
    Explain(commands::model::ExplainArgs),
    /// This site's own report (one HTML file, for the hospital only, never sent): the study
    /// report's tables and figures on this site's patients, from the node's own validation records,
    /// and Grad-CAM overlays of chosen patients under the final global model.
    SiteReport(commands::site_report::SiteReportArgs),
    /// Training speed benchmark: images/s of training and inference per model size (markdown table).
    Bench(commands::model::BenchArgs),
    /// The model's quality check on synthetic data, in one command: generates three training sites and
    /// an external one, trains each modality centrally, and compares its external AUC with the
    /// generator's oracle AUC and the modalities with one another (paired DeLong). Writes quality.md.
    Quality(commands::quality::QualityArgs),
}

/// Runs one parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Stats(command) => commands::stats::run(command),
        Command::Synth(args) => commands::synth::run(args),
        Command::CheckData(args) => commands::check_data::run(&args),
        Command::CheckIn(args) => commands::check_in::run(&args),
        Command::Run(args) => commands::federate::run(&args),
        Command::InitModel(args) => commands::federate::init_model(&args),
        Command::Train(args) => commands::model::train(&args),
        Command::Evaluate(args) => commands::model::evaluate(&args),
        Command::Explain(args) => commands::model::explain(&args),
        Command::SiteReport(args) => commands::site_report::run(&args),
        Command::Bench(args) => commands::model::bench(&args),
        Command::Quality(args) => commands::quality::run(&args),
    }
}

/// The parser of `--log-format`: "text" or "json", each listed in `--help`.
#[must_use]
pub fn log_format_parser() -> impl TypedValueParser<Value = LogFormat> {
    PossibleValuesParser::new(LogFormat::ALL.map(|format| PossibleValue::new(format.name())))
        .try_map(|name| name.parse::<LogFormat>())
}

/// Exit code for an error: 2 when the input (a file, a column, a value) is at fault, 1 otherwise.
#[must_use]
pub fn exit_code(error: &anyhow::Error) -> u8 {
    fedlnm_shared::process::exit_code(error, |_| false)
}
