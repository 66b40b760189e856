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
//!
//! The study's analyses (federated odds ratios, after the last round) are kept beside the rounds, one
//! file per analysis, each written atomically (a synced file renamed over the old one):
//! `STATE_DIR/analyses/NAME.json` ([`fedlnm_shared::analysis::AnalysisResult`]).
//!
//! A committed round's folder is named `round-` and at least 4 digits ([`committed_round_number`]);
//! this is the one rule for it, used by the aggregator and by the study report, which reads the folder
//! without changing it ([`RoundStore::open_existing`], [`RoundStore::load_record`]).

use fedlnm_shared::analysis::AnalysisResult;
use fedlnm_shared::checkpoint::{Checkpoint, CheckpointError};
use fedlnm_shared::federation::RoundRecord;
use fedlnm_shared::model_config::ModelConfig;
use fedlnm_shared::weights::{NamedTensors, sha256_hex};
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The folder of committed rounds inside the state folder.
pub const ROUNDS_DIR: &str = "rounds";
/// A committed round's model inside its `round-NNNN` folder.
pub const MODEL_FILE: &str = "global.safetensors";
/// A committed round's record ([`RoundRecord`]) inside its `round-NNNN` folder.
pub const RECORD_FILE: &str = "round.json";
/// The folder of the analyses' results inside the state folder.
pub const ANALYSES_DIR: &str = "analyses";
/// The prefix of a committed round's folder name (followed by at least 4 digits).
pub const ROUND_DIR_PREFIX: &str = "round-";

/// The state folder cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {problem}", path.display())]
    Corrupt { path: PathBuf, problem: String },
    #[error("round {round} is already committed in {}; refusing to overwrite it", path.display())]
    AlreadyCommitted { round: u64, path: PathBuf },
    #[error("{} is not a valid round record: {source}", path.display())]
    InvalidRecord {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{} is not a valid analysis result: {source}", path.display())]
    InvalidAnalysis {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{} records round {recorded}, but its folder is that of round {expected}", path.display())]
    RoundMismatch {
        path: PathBuf,
        recorded: u64,
        expected: u64,
    },
    #[error("{} and {} are both round {round}", first.display(), second.display())]
    DuplicateRound {
        round: u64,
        first: PathBuf,
        second: PathBuf,
    },
}

/// The round number of a committed round's folder name: `round-` and at least 4 digits.
/// `None` for anything else, including `.round-0003.partial` (a round being written).
#[must_use]
pub fn committed_round_number(folder_name: &str) -> Option<u64> {
    let digits = folder_name.strip_prefix(ROUND_DIR_PREFIX)?;
    if digits.len() < 4 || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        action,
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
        let bytes = fedlnm_shared::checkpoint::to_bytes(&config, &weights)?;
        Ok(Self::assemble(version, bytes, Checkpoint { config, weights }))
    }

    /// Parses a checkpoint's bytes: safetensors of F32 tensors with the model config in the metadata.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] naming `origin`.
    pub fn parse(version: u64, bytes: Vec<u8>, origin: &Path) -> Result<Self, StoreError> {
        let checkpoint = Checkpoint::from_bytes(&bytes, origin).map_err(|e| StoreError::Corrupt {
            path: origin.to_path_buf(),
            problem: e.to_string(),
        })?;
        Ok(Self::assemble(version, bytes, checkpoint))
    }

    /// A version from its checkpoint and that checkpoint's bytes.
    fn assemble(version: u64, bytes: Vec<u8>, checkpoint: Checkpoint) -> Self {
        Self {
            version,
            digest: sha256_hex(&bytes),
            config_digest: checkpoint.config.digest(),
            bytes,
            weights: checkpoint.weights,
            config: checkpoint.config,
        }
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
        std::fs::create_dir_all(&rounds).map_err(io("create the state folder", &rounds))?;
        for entry in std::fs::read_dir(&rounds).map_err(io("list", &rounds))? {
            let path = entry.map_err(io("list", &rounds))?.path();
            let partial = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.') && n.ends_with(".partial"));
            if partial {
                tracing::warn!(path = %path.display(), "removing an uncommitted round left by a crash");
                std::fs::remove_dir_all(&path).map_err(io("remove", &path))?;
            }
        }
        Ok(Self { rounds })
    }

    /// Opens `state_dir/rounds` for reading only: creates nothing and removes nothing, so that it can
    /// be read beside a serving aggregator (uncommitted rounds are skipped, not removed).
    ///
    /// # Errors
    /// [`StoreError::Io`] naming the rounds folder: missing, or cannot be listed.
    pub fn open_existing(state_dir: &Path) -> Result<Self, StoreError> {
        let rounds = state_dir.join(ROUNDS_DIR);
        std::fs::read_dir(&rounds).map_err(io("list", &rounds))?;
        Ok(Self { rounds })
    }

    /// The directory of round `round`.
    #[must_use]
    pub fn round_dir(&self, round: u64) -> PathBuf {
        self.rounds.join(format!("round-{round:04}"))
    }

    /// The numbers of the committed rounds, ascending: the directories named by
    /// [`committed_round_number`]. Dot-named entries (rounds being written) and anything else are
    /// skipped.
    ///
    /// # Errors
    /// The folder cannot be listed ([`StoreError::Io`]); two folders are the same round
    /// ([`StoreError::DuplicateRound`]); a round's folder is not named as [`RoundStore::round_dir`]
    /// names it, e.g. `round-00007` ([`StoreError::Corrupt`]).
    pub fn committed_rounds(&self) -> Result<Vec<u64>, StoreError> {
        let mut folders: Vec<(u64, PathBuf)> = Vec::new();
        for entry in std::fs::read_dir(&self.rounds).map_err(io("list", &self.rounds))? {
            let path = entry.map_err(io("list", &self.rounds))?.path();
            let name = path
                .file_name()
                .map(|name| name.to_string_lossy())
                .unwrap_or_default();
            if name.starts_with('.') {
                tracing::debug!(entry = %path.display(), "skipping an uncommitted round");
                continue;
            }
            match committed_round_number(&name) {
                Some(round) if path.is_dir() => folders.push((round, path)),
                _ => tracing::warn!(entry = %path.display(), "not a committed round folder: skipped"),
            }
        }
        folders.sort();
        if let Some(pair) = folders.windows(2).find(|pair| pair[0].0 == pair[1].0) {
            return Err(StoreError::DuplicateRound {
                round: pair[0].0,
                first: pair[0].1.clone(),
                second: pair[1].1.clone(),
            });
        }
        for (round, folder) in &folders {
            let expected = self.round_dir(*round);
            if *folder != expected {
                return Err(StoreError::Corrupt {
                    path: folder.clone(),
                    problem: format!("the folder of round {round} must be named {}", expected.display()),
                });
            }
        }
        Ok(folders.into_iter().map(|(round, _)| round).collect())
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
        let record = self.load_record(round)?;
        let model_path = dir.join(MODEL_FILE);
        let bytes = std::fs::read(&model_path).map_err(io("read", &model_path))?;
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

    /// Reads the record of committed round `round` (its `round.json`), without its model.
    ///
    /// # Errors
    /// The file cannot be read ([`StoreError::Io`]), is not a round record
    /// ([`StoreError::InvalidRecord`]) or records another round ([`StoreError::RoundMismatch`]); each
    /// names the file.
    pub fn load_record(&self, round: u64) -> Result<RoundRecord, StoreError> {
        let path = self.round_dir(round).join(RECORD_FILE);
        let bytes = std::fs::read(&path).map_err(io("read", &path))?;
        let record: RoundRecord = match serde_json::from_slice(&bytes) {
            Ok(record) => record,
            Err(source) => return Err(StoreError::InvalidRecord { path, source }),
        };
        if record.round != round {
            return Err(StoreError::RoundMismatch {
                path,
                recorded: record.round,
                expected: round,
            });
        }
        Ok(record)
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
            std::fs::remove_dir_all(&partial).map_err(io("remove", &partial))?;
        }
        std::fs::create_dir_all(&partial).map_err(io("create", &partial))?;
        let json = serde_json::to_vec_pretty(record).map_err(|e| StoreError::Corrupt {
            path: partial.join(RECORD_FILE),
            problem: e.to_string(),
        })?;
        write_synced(&partial.join(MODEL_FILE), &model.bytes)?;
        write_synced(&partial.join(RECORD_FILE), &json)?;
        sync_dir(&partial)?;
        std::fs::rename(&partial, &target).map_err(io("commit", &target))?;
        sync_dir(&self.rounds)?;
        Ok(target)
    }

    /// The folder of the analyses' results, beside the rounds.
    fn analyses_dir(&self) -> PathBuf {
        self.rounds.parent().unwrap_or(Path::new(".")).join(ANALYSES_DIR)
    }

    /// Stores the result of an analysis as `analyses/NAME.json` (see the module doc), replacing an
    /// earlier one of the same name; returns the file.
    ///
    /// # Errors
    /// A write, sync or rename failed (then the earlier result, if any, is still there).
    pub fn write_analysis(&self, result: &AnalysisResult) -> Result<PathBuf, StoreError> {
        let dir = self.analyses_dir();
        std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        let target = dir.join(format!("{}.json", result.analysis.name));
        let partial = dir.join(format!(".{}.json.partial", result.analysis.name));
        let json = serde_json::to_vec_pretty(result).map_err(|e| StoreError::Corrupt {
            path: target.clone(),
            problem: e.to_string(),
        })?;
        write_synced(&partial, &json)?;
        std::fs::rename(&partial, &target).map_err(io("store", &target))?;
        sync_dir(&dir)?;
        Ok(target)
    }

    /// The stored result of the analysis `name`; `None` when it has not run.
    ///
    /// # Errors
    /// The file cannot be read or is not a result.
    pub fn analysis(&self, name: &str) -> Result<Option<AnalysisResult>, StoreError> {
        let path = self.analyses_dir().join(format!("{name}.json"));
        match fedlnm_shared::files::read_regular(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| StoreError::InvalidAnalysis { path, source }),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::Io {
                action: "read",
                path,
                source,
            }),
        }
    }

    /// Every stored analysis result, by name (none when the folder is absent).
    ///
    /// # Errors
    /// As [`Self::analysis`].
    pub fn analyses(&self) -> Result<Vec<AnalysisResult>, StoreError> {
        let dir = self.analyses_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(StoreError::Io {
                    action: "list",
                    path: dir,
                    source,
                });
            }
        };
        let mut names = Vec::new();
        for entry in entries {
            let name = entry
                .map_err(io("list", &dir))?
                .file_name()
                .to_string_lossy()
                .into_owned();
            if let Some(stem) = name.strip_suffix(".json").filter(|stem| !stem.starts_with('.')) {
                names.push(stem.to_owned());
            }
        }
        names.sort();
        let mut results = Vec::new();
        for name in names {
            results.extend(self.analysis(&name)?);
        }
        Ok(results)
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let mut file = File::create(path).map_err(io("create", path))?;
    file.write_all(bytes).map_err(io("write", path))?;
    file.sync_all().map_err(io("sync", path))
}

/// Makes a rename or a new file in `dir` durable (a no-op where directories cannot be opened).
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    match File::open(dir) {
        Ok(handle) => handle.sync_all().map_err(io("sync", dir)),
        Err(_) if cfg!(windows) => Ok(()),
        Err(source) => Err(StoreError::Io {
            action: "open",
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
            privacy: None,
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
    fn committed_round_folders_are_recognised_by_name() {
        let cases: [(&str, Option<u64>); 9] = [
            ("round-0000", Some(0)),
            ("round-0012", Some(12)),
            ("round-12345", Some(12_345)),
            ("round-012", None),
            ("round-12", None),
            (".round-0003.partial", None),
            ("round-0003.partial", None),
            ("round-+123", None),
            ("global.safetensors", None),
        ];
        for (name, expected) in cases {
            assert_eq!(committed_round_number(name), expected, "{name}");
        }
    }

    /// What the report relies on: opening for reading creates nothing and removes nothing, and a
    /// record is read without its model.
    #[test]
    fn open_existing_reads_without_changing_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            RoundStore::open_existing(dir.path()),
            Err(StoreError::Io { .. })
        ));
        assert!(!dir.path().join(ROUNDS_DIR).exists());

        let store = RoundStore::open(dir.path()).unwrap();
        for round in 0..2 {
            let model = blob(round, round as f32);
            store.commit(&record(round, &model), &model).unwrap();
        }
        let partial = dir.path().join("rounds/.round-0002.partial");
        std::fs::create_dir_all(&partial).unwrap();
        std::fs::write(store.round_dir(1).join(MODEL_FILE), b"not a model").unwrap();

        let reader = RoundStore::open_existing(dir.path()).unwrap();
        assert!(partial.exists());
        assert_eq!(reader.committed_rounds().unwrap(), vec![0, 1]);
        assert_eq!(reader.load_record(1).unwrap().round, 1);
        assert!(partial.exists());
    }

    #[test]
    fn a_round_in_two_folders_or_under_another_name_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = RoundStore::open(dir.path()).unwrap();
        let model = blob(0, 0.5);
        store.commit(&record(0, &model), &model).unwrap();
        let misnamed = dir.path().join("rounds/round-00001");
        std::fs::create_dir_all(&misnamed).unwrap();
        let error = store.committed_rounds().unwrap_err();
        assert!(matches!(error, StoreError::Corrupt { .. }), "{error:?}");
        assert!(error.to_string().contains("round-00001"), "{error}");

        std::fs::create_dir_all(store.round_dir(1)).unwrap();
        assert!(matches!(
            store.committed_rounds(),
            Err(StoreError::DuplicateRound { round: 1, .. })
        ));
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
