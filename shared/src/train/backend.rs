//! The one place that names concrete burn backends: Flex on the CPU, burn-cuda behind the `cuda`
//! feature. Each function dispatches a [`Device`] to the generic implementation.
//!
//! cubecl's autotune cache for CUDA (kernel choices, slow to find) is not yet persisted on purpose:
//! cubecl 0.10 reads `cubecl.toml` from the working directory upwards, whose `[autotune] cache` takes
//! `local`, `target` (default: `target/` of the nearest Cargo project, else the user cache dir) or
//! `{ file = PATH }`; a node would point it at its state directory (see docs/model.md).

use super::{Prediction, Progress, TrainError, TrainOutcome, generic};
use crate::features::Example;
use crate::model_config::{ModelConfig, TrainPlan};
use crate::weights::NamedTensors;
use burn::backend::Autodiff;
use burn::backend::flex::{Flex, FlexDevice};

/// Where the model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    /// The CPU (burn's Flex backend, all cores).
    #[default]
    Cpu,
    /// The first NVIDIA GPU (burn-cuda; needs the `cuda` feature).
    Cuda,
}

/// Expands `$body` with `B` bound to the inner backend and `device` to its device for `$device`.
macro_rules! dispatch {
    ($device:expr, |$backend:ident, $dev:ident| $body:expr) => {
        match $device {
            Device::Cpu => {
                type $backend = Flex;
                let $dev = FlexDevice;
                $body
            }
            #[cfg(feature = "cuda")]
            Device::Cuda => {
                type $backend = burn::backend::Cuda;
                let $dev = burn::backend::cuda::CudaDevice::default();
                $body
            }
            #[cfg(not(feature = "cuda"))]
            Device::Cuda => Err(TrainError::CudaNotBuilt),
        }
    };
}

/// Freshly initialised weights of `config`, reproducible from `seed` (generated on the CPU).
#[must_use]
pub fn initial_weights(config: &ModelConfig, seed: u64) -> NamedTensors {
    generic::initial_weights::<Flex>(config, seed, &FlexDevice)
}

/// Trains from `initial` weights; returns the new weights, the number of training patients and the
/// log. `progress` is called after each step and each epoch.
pub fn train_local(
    device: Device,
    config: &ModelConfig,
    initial: &NamedTensors,
    train: &[Example],
    validation: &[Example],
    plan: &TrainPlan,
    progress: &mut dyn FnMut(&Progress),
) -> Result<TrainOutcome, TrainError> {
    dispatch!(device, |B, dev| generic::train_local::<Autodiff<B>>(
        config, initial, train, validation, plan, &dev, progress
    ))
}

/// Predictions for `examples` (inference mode).
pub fn predict(
    device: Device,
    config: &ModelConfig,
    weights: &NamedTensors,
    examples: &[Example],
    batch_size: usize,
) -> Result<Vec<Prediction>, TrainError> {
    dispatch!(device, |B, dev| generic::predict::<B>(
        config, weights, examples, batch_size, &dev
    ))
}

/// Grad-CAM heat maps (side `image.input_size`, values in [0, 1]) of the LNM logit for each example;
/// `None` when the model has no image branch.
pub fn grad_cam(
    device: Device,
    config: &ModelConfig,
    weights: &NamedTensors,
    examples: &[Example],
) -> Result<Option<Vec<Vec<f32>>>, TrainError> {
    dispatch!(device, |B, dev| generic::grad_cam::<Autodiff<B>>(
        config, weights, examples, &dev
    ))
}

/// Training and inference throughput of `config` with random inputs (`steps` timed steps after one
/// warm-up step).
pub fn bench(
    device: Device,
    config: &ModelConfig,
    batch_size: usize,
    steps: usize,
) -> Result<super::BenchResult, TrainError> {
    dispatch!(device, |B, dev| Ok(generic::bench::<Autodiff<B>>(
        config, batch_size, steps, &dev
    )))
}

/// Loads `weights` into a (CPU) model of `config` and reads them back: the identity, bit for bit, in
/// the model's order (a check of the wire representation; errors when the layout does not fit).
pub fn round_trip(config: &ModelConfig, weights: &NamedTensors) -> Result<NamedTensors, TrainError> {
    let model = crate::model::from_named(crate::model::LnmModel::<Flex>::new(config, &FlexDevice), weights)?;
    Ok(crate::model::to_named(&model))
}
