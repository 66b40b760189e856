//! The aggregator's state folder: one directory per committed round, written atomically.
//!
//! ```text
//! STATE_DIR/rounds/round-0000/global.safetensors   the initial model (version 0)
//!                             round.json           fedlnm_shared::federation::RoundRecord
//! STATE_DIR/rounds/round-0001/...                  the model after round 1 and its validation
//! ```
//! A round is committed by writing both files into `rounds/.round-NNNN.partial/`, syncing them to
//! disk, renaming the directory to `round-NNNN` and syncing `rounds/`: after a crash a round directory
//! is either complete or absent, never half written. Leftover `.partial` directories (a crash during a
//! commit) are removed at start. A committed round is never overwritten. On start the latest round is
//! loaded and its model checked against the digest recorded with it.

use fedlnm_shared::checkpoint::{Checkpoint, CheckpointError};
use fedlnm_shared::federation::RoundRecord;
use fedlnm_shared::model_config::ModelConfig;
use fedlnm_shared::weights::{NamedTensors, sha256_hex};
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const ROUNDS_DIR: &str = "rounds";
pub const MODEL_FILE: &str = "global.safetensors";
pub const RECORD_FILE: &str = "round.json";

/// The state folder cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: {problem}", path.display())]
    Corrupt { path: PathBuf, problem: String },
    #[error("round {round} is already committed in {}; refusing to overwrite it", path.display())]
    AlreadyCommitted { round: u64, path: PathBuf },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A global model version as the aggregator serves it: the safetensors bytes (what travels), their
/// digest, and the parsed weights and config.
#[derive(Debug)]
pub struct ModelBlob {
    pub version: u64,
    pub bytes: Vec<u8>,
    pub digest: String,
    pub weights: NamedTensors,
    pub config: ModelConfig,
    pub config_digest: String,
}

impl ModelBlob {
    /// Serializes `weights` with `config` in the metadata (the checkpoint format of the node).
    ///
    /// # Errors
    /// The weights cannot be serialized (a tensor whose values do not fill its shape).
    pub fn new(version: u64, weights: NamedTensors, config: ModelConfig) -> Result<Self, CheckpointError> {
        let checkpoint = Checkpoint { config, weights };
        let bytes = checkpoint.to_bytes()?;
        let Checkpoint { config, weights } = checkpoint;
        Ok(Self {
            version,
            digest: sha256_hex(&bytes),
            config_digest: config.digest(),
            bytes,
            weights,
            config,
        })
    }

    /// Parses a checkpoint's bytes: safetensors of F32 tensors with the model config in the metadata.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] naming `origin`.
    pub fn parse(version: u64, bytes: Vec<u8>, origin: &Path) -> Result<Self, StoreError> {
        let Checkpoint { config, weights } =
            Checkpoint::from_bytes(&bytes, origin).map_err(|e| StoreError::Corrupt {
                path: origin.to_path_buf(),
                problem: e.to_string(),
            })?;
        Ok(Self {
            version,
            digest: sha256_hex(&bytes),
            config_digest: config.digest(),
            bytes,
            weights,
            config,
        })
    }
}

/// A committed round: its record and its global model.
#[derive(Debug, Clone)]
pub struct Committed {
    pub record: RoundRecord,
    pub model: Arc<ModelBlob>,
}

/// The rounds directory of a state folder.
#[derive(Debug, Clone)]
pub struct RoundStore {
    rounds: PathBuf,
}

impl RoundStore {
    /// Opens (creating if needed) `state_dir/rounds` and removes uncommitted leftovers.
    ///
    /// # Errors
    /// The folder cannot be created or listed.
    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        let rounds = state_dir.join(ROUNDS_DIR);
        std::fs::create_dir_all(&rounds).map_err(io(&rounds))?;
        for entry in std::fs::read_dir(&rounds).map_err(io(&rounds))? {
            let path = entry.map_err(io(&rounds))?.path();
            let partial = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.') && n.ends_with(".partial"));
            if partial {
                tracing::warn!(path = %path.display(), "removing an uncommitted round left by a crash");
                std::fs::remove_dir_all(&path).map_err(io(&path))?;
            }
        }
        Ok(Self { rounds })
    }

    /// The directory of round `round`.
    #[must_use]
    pub fn round_dir(&self, round: u64) -> PathBuf {
        self.rounds.join(format!("round-{round:04}"))
    }

    /// The numbers of the committed rounds, ascending.
    ///
    /// # Errors
    /// The folder cannot be listed.
    pub fn committed_rounds(&self) -> Result<Vec<u64>, StoreError> {
        let mut rounds = Vec::new();
        for entry in std::fs::read_dir(&self.rounds).map_err(io(&self.rounds))? {
            let entry = entry.map_err(io(&self.rounds))?;
            let name = entry.file_name();
            if let Some(number) = name.to_str().and_then(|n| n.strip_prefix("round-"))
                && let Ok(round) = number.parse::<u64>()
            {
                rounds.push(round);
            }
        }
        rounds.sort_unstable();
        Ok(rounds)
    }

    /// The latest committed round, with its model checked against the recorded digest.
    ///
    /// # Errors
    /// Unreadable or inconsistent files (named).
    pub fn latest(&self) -> Result<Option<Committed>, StoreError> {
        match self.committed_rounds()?.last() {
            Some(&round) => self.load(round).map(Some),
            None => Ok(None),
        }
    }

    /// Loads committed round `round`.
    ///
    /// # Errors
    /// Unreadable or inconsistent files (named).
    pub fn load(&self, round: u64) -> Result<Committed, StoreError> {
        let dir = self.round_dir(round);
        let record_path = dir.join(RECORD_FILE);
        let text = std::fs::read_to_string(&record_path).map_err(io(&record_path))?;
        let record: RoundRecord = serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
            path: record_path.clone(),
            problem: e.to_string(),
        })?;
        let model_path = dir.join(MODEL_FILE);
        let bytes = std::fs::read(&model_path).map_err(io(&model_path))?;
        let model = ModelBlob::parse(round, bytes, &model_path)?;
        if model.digest != record.model_digest || record.round != round {
            return Err(StoreError::Corrupt {
                path: model_path,
                problem: format!(
                    "SHA-256 {} (round {}) but {} records {} (round {round})",
                    model.digest,
                    record.round,
                    record_path.display(),
                    record.model_digest
                ),
            });
        }
        Ok(Committed {
            record,
            model: Arc::new(model),
        })
    }

    /// Commits a round atomically (see the module doc). The record's digest must be the model's.
    ///
    /// # Errors
    /// The round exists already, or a write, sync or rename failed (then nothing is committed).
    pub fn commit(&self, record: &RoundRecord, model: &ModelBlob) -> Result<PathBuf, StoreError> {
        let target = self.round_dir(record.round);
        if target.exists() {
            return Err(StoreError::AlreadyCommitted {
                round: record.round,
                path: target,
            });
        }
        if record.model_digest != model.digest {
            return Err(StoreError::Corrupt {
                path: target,
                problem: "the record's model digest is not the model's".to_owned(),
            });
        }
        let partial = self.rounds.join(format!(".round-{:04}.partial", record.round));
        if partial.exists() {
            std::fs::remove_dir_all(&partial).map_err(io(&partial))?;
        }
        std::fs::create_dir_all(&partial).map_err(io(&partial))?;
        let json = serde_json::to_vec_pretty(record).map_err(|e| StoreError::Corrupt {
            path: partial.join(RECORD_FILE),
            problem: e.to_string(),
        })?;
        write_synced(&partial.join(MODEL_FILE), &model.bytes)?;
        write_synced(&partial.join(RECORD_FILE), &json)?;
        sync_dir(&partial)?;
        std::fs::rename(&partial, &target).map_err(io(&target))?;
        sync_dir(&self.rounds)?;
        Ok(target)
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let mut file = File::create(path).map_err(io(path))?;
    file.write_all(bytes).map_err(io(path))?;
    file.sync_all().map_err(io(path))
}

/// Makes a rename or a new file in `dir` durable (a no-op where directories cannot be opened).
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    match File::open(dir) {
        Ok(handle) => handle.sync_all().map_err(io(dir)),
        Err(_) if cfg!(windows) => Ok(()),
        Err(source) => Err(StoreError::Io {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use fedlnm_shared::federation::AggregationKind;
    use fedlnm_shared::model_config::Modality;
    use fedlnm_shared::weights::NamedTensor;

    fn blob(version: u64, value: f32) -> ModelBlob {
        let weights = NamedTensors {
            tensors: vec![NamedTensor::new("head.weight", vec![2], vec![value, 1.0]).unwrap()],
        };
        ModelBlob::new(version, weights, ModelConfig::tiny(Modality::Multimodal)).unwrap()
    }

    fn record(round: u64, model: &ModelBlob) -> RoundRecord {
        RoundRecord {
            study: "s".into(),
            round,
            model_digest: model.digest.clone(),
            model_config_digest: model.config_digest.clone(),
            aggregation: AggregationKind::Plain,
            contributors: vec![],
            total_samples: 0,
            dropped: vec![],
            aggregation_seconds: 0.0,
            round_seconds: 0.0,
            committed_at: String::new(),
            sites: vec![],
            pooled_train_sites: None,
            pooled_validation_sites: None,
        }
    }

    #[test]
    fn commits_resume_and_never_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let store = RoundStore::open(dir.path()).unwrap();
        assert!(store.latest().unwrap().is_none());
        for round in 0..3 {
            let model = blob(round, round as f32);
            store.commit(&record(round, &model), &model).unwrap();
        }
        // A crash during the commit of round 3 leaves a partial directory: ignored, then removed.
        let partial = dir.path().join("rounds/.round-0003.partial");
        std::fs::create_dir_all(&partial).unwrap();
        std::fs::write(partial.join(MODEL_FILE), b"half").unwrap();
        let store = RoundStore::open(dir.path()).unwrap();
        assert!(!partial.exists());
        let latest = store.latest().unwrap().unwrap();
        assert_eq!(latest.record.round, 2);
        assert_eq!(latest.model.weights.tensors[0].values, vec![2.0, 1.0]);
        let again = blob(2, 9.0);
        assert!(matches!(
            store.commit(&record(2, &again), &again),
            Err(StoreError::AlreadyCommitted { round: 2, .. })
        ));
        assert_eq!(store.load(2).unwrap().model.digest, latest.model.digest);
    }

    #[test]
    fn a_model_file_that_does_not_match_its_record_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let store = RoundStore::open(dir.path()).unwrap();
        let model = blob(0, 0.5);
        let path = store.commit(&record(0, &model), &model).unwrap();
        std::fs::write(path.join(MODEL_FILE), &blob(0, 0.25).bytes).unwrap();
        let error = store.latest().unwrap_err().to_string();
        assert!(
            error.contains("global.safetensors") && error.contains("SHA-256"),
            "{error}"
        );
    }
}
