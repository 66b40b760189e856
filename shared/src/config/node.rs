//! `node.toml`: a site's node configuration, validated at load.

use super::{ComputeDevice, ConfigError, TlsFiles, read_toml, validate_site_id};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// `node.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This site's id; must match the id in its certificate.
    pub site: String,
    pub study: String,
    /// The aggregator's URL, e.g. `https://aggregator.example.org:50051`.
    pub aggregator: String,
    /// The host name in the aggregator's certificate, when it differs from the URL's host.
    #[serde(default)]
    pub aggregator_name: Option<String>,
    pub tls: TlsFiles,
    /// Folder of this site's patients (the site dataset format, `docs/dataset-format.md`).
    pub data: PathBuf,
    /// Folder where the node keeps its own state (downloaded models, logs).
    pub work_dir: PathBuf,
    /// Fraction of this site's patients held out (stratified by LNM, fixed seed) to validate each
    /// global model; a `validate` site scores all its patients.
    #[serde(default = "default_validation_fraction")]
    pub validation_fraction: f64,
    /// k-fold cross-validation (`[cross_validation]`: `folds`, `fold`): a training site validates on
    /// fold `fold` (0-based) of `folds` stratified folds of its patients (fixed seed) and trains on the
    /// others, instead of holding out `validation_fraction`. A k-fold study is k studies, the j-th
    /// with `fold = j` at every training site (`fedlnm-sim --design k-fold` runs them).
    #[serde(default)]
    pub cross_validation: Option<CrossValidationFold>,
    /// "cpu" (default) or "cuda" (a node built with `--features cuda`).
    #[serde(default)]
    pub device: ComputeDevice,
    /// The study's model configuration digest, when the study announced it: the node refuses a model
    /// whose configuration has another digest.
    #[serde(default)]
    pub model_config_digest: Option<String>,
    /// What this site answers of the study's analyses (`[analysis]`: `enabled`, `min_rows`).
    #[serde(default)]
    pub analysis: crate::analysis::SitePolicy,
}

/// One fold of a k-fold cross-validation (`[cross_validation]` of node.toml).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrossValidationFold {
    /// k: how many folds the site's patients are split into (at least 2).
    pub folds: usize,
    /// Which fold validates (0 to k − 1).
    pub fold: usize,
}

fn default_validation_fraction() -> f64 {
    0.2
}

impl NodeConfig {
    /// Reads and validates `node.toml`; relative paths become relative to its folder.
    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        let mut config: Self = read_toml(file)?;
        let invalid = |key: &str, problem: String| ConfigError::invalid(key, problem).in_file(file);
        validate_site_id(&config.site).map_err(|p| invalid("site", p.to_string()))?;
        validate_site_id(&config.study).map_err(|p| invalid("study", p.to_string()))?;
        if !(config.aggregator.starts_with("https://")) {
            return Err(invalid(
                "aggregator",
                format!("'{}' must be an https:// URL", config.aggregator),
            ));
        }
        if !(config.validation_fraction > 0.0 && config.validation_fraction < 1.0) {
            return Err(invalid(
                "validation_fraction",
                format!("{} must be in (0, 1)", config.validation_fraction),
            ));
        }
        if let Some(CrossValidationFold { folds, fold }) = config.cross_validation {
            if folds < 2 {
                return Err(invalid(
                    "cross_validation.folds",
                    format!("{folds} folds: at least 2 are needed"),
                ));
            }
            if fold >= folds {
                return Err(invalid(
                    "cross_validation.fold",
                    format!("fold {fold} does not exist among folds 0 to {}", folds - 1),
                ));
            }
        }
        config
            .analysis
            .check()
            .map_err(|(key, problem)| invalid(&format!("analysis.{key}"), problem))?;
        let base = file.parent().unwrap_or(Path::new("."));
        config.tls = config.tls.relative_to(base);
        config.data = base.join(&config.data);
        config.work_dir = base.join(&config.work_dir);
        Ok(config)
    }
}
