//! A model checkpoint, the one format and the one parser for a model's weights and its architecture:
//! a safetensors file of F32 tensors whose metadata carries the model configuration (canonical JSON)
//! and its digest. The node writes and reads it, the aggregator serves and commits it, and a digest that
//! does not match its configuration is refused.

use crate::model_config::{ConfigError, ModelConfig};
use crate::weights::{NamedTensors, WeightsError, sha256_hex};
use std::path::{Path, PathBuf};

/// A checkpoint that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot read checkpoint {}: {source}", file.display())]
    Unreadable { file: PathBuf, source: std::io::Error },
    #[error("cannot write checkpoint {}: {source}", file.display())]
    Unwritable { file: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error("{}: {source}", origin.display())]
    Config { origin: PathBuf, source: ConfigError },
    #[error("{}: tensor '{tensor}' holds a non-finite value (NaN or infinity): not a usable model", origin.display())]
    NonFinite { origin: PathBuf, tensor: String },
}

/// A model: its configuration and its weights.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub config: ModelConfig,
    pub weights: NamedTensors,
}

impl Checkpoint {
    /// Parses checkpoint bytes; `origin` names where they came from (a file, `global model version 3`).
    ///
    /// # Errors
    /// Not safetensors of F32 tensors, no valid configuration whose digest is the stored one, or a
    /// non-finite weight.
    pub fn from_bytes(bytes: &[u8], origin: &Path) -> Result<Self, CheckpointError> {
        let (weights, metadata) = NamedTensors::from_safetensors_bytes(bytes, origin)?;
        let config =
            ModelConfig::from_checkpoint_metadata(&metadata).map_err(|source| CheckpointError::Config {
                origin: origin.to_path_buf(),
                source,
            })?;
        if let Some(tensor) = weights
            .tensors
            .iter()
            .find(|t| t.values.iter().any(|v| !v.is_finite()))
        {
            return Err(CheckpointError::NonFinite {
                origin: origin.to_path_buf(),
                tensor: tensor.name.clone(),
            });
        }
        Ok(Self { config, weights })
    }

    /// Reads a checkpoint file.
    ///
    /// # Errors
    /// As [`Self::from_bytes`], or an unreadable file.
    pub fn read(file: &Path) -> Result<Self, CheckpointError> {
        let bytes = crate::files::read_regular(file).map_err(|source| CheckpointError::Unreadable {
            file: file.to_path_buf(),
            source,
        })?;
        Self::from_bytes(&bytes, file)
    }

    /// The checkpoint's bytes (deterministic: the same model always gives the same bytes and SHA-256).
    ///
    /// # Errors
    /// A tensor whose values do not fill its shape.
    pub fn to_bytes(&self) -> Result<Vec<u8>, CheckpointError> {
        to_bytes(&self.config, &self.weights)
    }

    /// Writes the checkpoint to `file`.
    ///
    /// # Errors
    /// As [`Self::to_bytes`], or the file cannot be written.
    pub fn write(&self, file: &Path) -> Result<(), CheckpointError> {
        write(file, &self.config, &self.weights)
    }

    /// The SHA-256 (hex) of [`Self::to_bytes`].
    ///
    /// # Errors
    /// As [`Self::to_bytes`].
    pub fn digest(&self) -> Result<String, CheckpointError> {
        self.to_bytes().map(|bytes| sha256_hex(&bytes))
    }
}

/// The checkpoint bytes of `weights` with `config` (as [`Checkpoint::to_bytes`], without owning them).
///
/// # Errors
/// A tensor whose values do not fill its shape.
pub fn to_bytes(config: &ModelConfig, weights: &NamedTensors) -> Result<Vec<u8>, CheckpointError> {
    Ok(weights.to_safetensors_bytes(&config.checkpoint_metadata())?)
}

/// Writes `weights` with `config` as the checkpoint file `file`.
///
/// # Errors
/// As [`to_bytes`], or the file cannot be written.
pub fn write(file: &Path, config: &ModelConfig, weights: &NamedTensors) -> Result<(), CheckpointError> {
    std::fs::write(file, to_bytes(config, weights)?).map_err(|source| CheckpointError::Unwritable {
        file: file.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::model_config::{META_DIGEST, Modality};
    use crate::weights::NamedTensor;

    fn checkpoint() -> Checkpoint {
        Checkpoint {
            config: ModelConfig::tiny(Modality::Multimodal),
            weights: NamedTensors {
                tensors: vec![NamedTensor::new("head.weight", vec![2], vec![0.5, -1.0]).unwrap()],
            },
        }
    }

    #[test]
    fn round_trips_and_refuses_a_digest_that_is_not_its_config() {
        let original = checkpoint();
        let bytes = original.to_bytes().unwrap();
        assert_eq!(Checkpoint::from_bytes(&bytes, Path::new("x")).unwrap(), original);
        let mut metadata = original.config.checkpoint_metadata();
        metadata.insert(META_DIGEST.to_owned(), "00".repeat(32));
        let forged = original.weights.to_safetensors_bytes(&metadata).unwrap();
        let error = Checkpoint::from_bytes(&forged, Path::new("global model version 2"))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("global model version 2") && error.contains(META_DIGEST),
            "{error}"
        );
    }
}
