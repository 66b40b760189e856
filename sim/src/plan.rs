//! A study's model and local-training plan, from the arguments (`--model-config`, `--lr-schedule`).

use super::SimulateArgs;
use fedlnm_shared::config::LearningRateSchedule;
use fedlnm_shared::model_config::{ConfigFile, Modality, ModelConfig, TrainPlan};
use std::path::Path;

/// `--lr-schedule`'s two values, as `rounds.learning_rate_schedule` names them but with dashes.
pub(crate) fn schedule_parser() -> impl clap::builder::TypedValueParser<Value = LearningRateSchedule> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(["each-round", "across-rounds"]).map(|name| {
        if name == "across-rounds" {
            LearningRateSchedule::AcrossRounds
        } else {
            LearningRateSchedule::EachRound
        }
    })
}

/// `--model-config`: the file read and validated (model and plan) when the arguments are parsed.
pub(crate) fn read_model_config(file: &str) -> Result<ConfigFile, String> {
    let config = ConfigFile::read(Path::new(file)).map_err(|e| e.to_string())?;
    config.train.validate().map_err(|e| format!("{file}: {e}"))?;
    Ok(config)
}

/// The model every study of a simulation trains: `--model-config`'s, or the tiny ResNet at the
/// arguments' input size and width; of `modality`.
pub(crate) fn study_model(args: &SimulateArgs, modality: Modality) -> ModelConfig {
    let mut model = match &args.model_config {
        Some(file) => file.model.clone(),
        None => {
            let mut model = ModelConfig::tiny(modality);
            model.image.input_size = args.image_size;
            model.image.base_width = args.base_width;
            model
        }
    };
    model.modality = modality;
    model
}

/// The local training of one round: AdamW at the arguments' learning rate and batch 16, or
/// `--model-config`'s plan; in both, `--local-epochs`, no warm-up, no early stopping, no weight
/// averaging (a round's few steps; the rounds themselves average), the arguments' FedProx μ and seed.
pub(crate) fn study_plan(args: &SimulateArgs) -> TrainPlan {
    let base = match &args.model_config {
        Some(file) => file.train.clone(),
        None => TrainPlan {
            batch_size: 16,
            learning_rate: args.learning_rate,
            ..TrainPlan::default()
        },
    };
    TrainPlan {
        epochs: args.local_epochs,
        warmup_fraction: 0.0,
        patience: 0,
        ema_decay: 0.0,
        proximal_mu: args.proximal_mu,
        seed: args.seed,
        ..base
    }
}
