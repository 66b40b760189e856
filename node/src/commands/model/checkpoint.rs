//! Checkpoint files: weights in safetensors, with the model config (canonical JSON) and its digest in
//! the metadata.

use anyhow::Context as _;
use fedlnm_shared::model_config::ModelConfig;
use fedlnm_shared::weights::NamedTensors;
use std::path::Path;

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
