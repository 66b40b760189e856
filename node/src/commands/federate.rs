//! `fedlnm-node run` (take part in the study: the federated rounds) and `fedlnm-node init-model` (the
//! study's initial global model, made once by the central team before round 1).

use super::model::{device_parser, write_checkpoint};
use anyhow::Context as _;
use clap::Args;
use fedlnm_model::train;
use fedlnm_shared::config::{ComputeDevice, NodeConfig};
use fedlnm_shared::model_config::{ConfigFile, ModelConfig, TrainPlan};
use std::path::PathBuf;

/// Arguments of `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The site's node.toml (from its startup kit).
    #[arg(long, default_value = "node.toml")]
    pub config: PathBuf,
    /// Overrides the `device` of node.toml.
    #[arg(long, value_parser = device_parser())]
    pub device: Option<ComputeDevice>,
}

/// Arguments of `init-model`.
#[derive(Debug, Args)]
pub struct InitModelArgs {
    /// The study's model.toml ([model]; [train] is ignored here); default: ResNet-18 at 224 px.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Seed of the initial weights.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// The checkpoint to write (name it as `initial_model` in aggregator.toml).
    #[arg(long)]
    pub out: PathBuf,
}

/// `run`: the node loop until the study is finished.
pub fn run(args: &RunArgs) -> anyhow::Result<()> {
    let mut config = NodeConfig::load(&args.config)?;
    if let Some(device) = args.device {
        config.device = device;
    }
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let outcome = runtime.block_on(async {
        let signals = fedlnm_protocol::signals::StopSignals::watch();
        tokio::select! {
            summary = crate::federation::Node::new(config).run() => Some(summary),
            signal = signals.first() => {
                tracing::info!(
                    signal,
                    "stopping: this site leaves the round in progress (the aggregator goes on without \
                     it); `fedlnm-node run` again rejoins the study"
                );
                None
            }
        }
    });
    // Local training may still be running on a blocking thread: it is abandoned with the process.
    runtime.shutdown_background();
    let Some(summary) = outcome else {
        return Ok(());
    };
    let summary = summary?;
    println!(
        "study finished: trained {} rounds, validated {} models; final model {}",
        summary.rounds_trained.len(),
        summary.rounds_validated.len(),
        summary.final_model.map_or_else(
            || "-".to_owned(),
            |(file, digest)| format!("{} (SHA-256 {digest})", file.display())
        )
    );
    Ok(())
}

/// `init-model`: freshly initialised weights of the study's model, as a checkpoint.
pub fn init_model(args: &InitModelArgs) -> anyhow::Result<()> {
    let model = match &args.config {
        Some(file) => ConfigFile::read(file)?.model,
        None => {
            ConfigFile {
                model: ModelConfig::resnet18(),
                train: TrainPlan::default(),
            }
            .model
        }
    };
    model.validate()?;
    let weights = train::initial_weights(&model, args.seed);
    write_checkpoint(&args.out, &model, &weights)?;
    println!(
        "initial model written to {} ({} parameters, config digest {})",
        args.out.display(),
        weights.n_values(),
        model.digest()
    );
    Ok(())
}
