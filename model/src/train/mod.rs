//! Training, prediction and Grad-CAM (feature `model`) behind a plain-data facade: weights in and out
//! as [`NamedTensors`], patients as [`Example`]s, the backend named by a
//! [`ComputeDevice`](fedlnm_shared::config::ComputeDevice). The federation's
//! `train_local(model_weights, data, plan) -> (new_weights, n)` is [`train_local`].

mod backend;
mod generic;

pub use backend::{
    adapt_normalisation, bench, grad_cam, initial_weights, predict, predict_at_site, round_trip, train_local,
    use_autotune_cache,
};
pub use fedlnm_shared::evaluation::Prediction;
pub use fedlnm_shared::features::Targets;

use fedlnm_shared::weights::{NamedTensors, WeightsError};
use serde::Serialize;

/// What one training run produced.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    /// The weights of the best epoch (validation AUC), or of the last epoch without validation data.
    pub weights: NamedTensors,
    /// Labelled training patients used (the federation's FedAvg weight).
    pub n_samples: usize,
    pub history: Vec<EpochLog>,
    /// 1-based epoch whose weights were kept.
    pub best_epoch: usize,
}

/// One epoch of the training log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EpochLog {
    pub epoch: usize,
    pub learning_rate: f64,
    pub train_loss: f64,
    pub train_lnm_loss: f64,
    pub train_t_loss: f64,
    pub train_n_loss: f64,
    /// Report-supervision loss (models with `report_supervision`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train_findings_loss: Option<f64>,
    pub val_auc: Option<f64>,
    pub val_lnm_loss: Option<f64>,
    pub seconds: f64,
    /// Training throughput: forward, backward and optimiser step, augmentation included.
    pub images_per_second: f64,
}

/// What training reports to its caller as it goes (for a progress bar or log lines): each optimiser
/// step and each finished epoch.
#[derive(Debug, Clone, PartialEq)]
pub enum TrainingEvent {
    Step {
        epoch: usize,
        step: usize,
        total_steps: usize,
        loss: f64,
    },
    Epoch(EpochLog),
}

/// Training or prediction that cannot run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("training needs at least 2 labelled patients, found {found}")]
    TooFewPatients { found: usize },
    #[error("the weights do not fit the model: {0}")]
    Weights(#[from] WeightsError),
    #[error("this fedlnm-node was built without CUDA support (rebuild with `--features cuda`)")]
    CudaNotBuilt,
    #[error("cannot create the autotune cache folder {}: {source}", dir.display())]
    AutotuneCacheDir {
        dir: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cubecl's configuration is already fixed in this process (autotune cache: {current}); \
         cannot move the autotune cache to {}",
        requested.display()
    )]
    AutotuneCacheFixed {
        requested: std::path::PathBuf,
        current: String,
    },
}

/// Throughput of one model configuration on one device.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BenchResult {
    pub n_parameters: usize,
    /// Forward, backward and AdamW step.
    pub train_images_per_second: f64,
    /// Forward only, inference mode (the baseline measured in the same run).
    pub inference_images_per_second: f64,
}
