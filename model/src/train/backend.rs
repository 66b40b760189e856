//! The one place that names concrete burn backends: Flex on the CPU, burn-cuda behind the `cuda`
//! feature. Each function dispatches a [`ComputeDevice`] to the generic implementation.
//!
//! cubecl's autotune cache for CUDA (which kernel variant is fastest for each operation and shape,
//! found by benchmarking them: minutes on a first run) is persisted where the caller says, through
//! [`use_autotune_cache`]: the node points it at `<work_dir>/cubecl-autotune` (federated rounds) or
//! `--autotune-cache DIR` (the `train`, `evaluate`, `explain` and `bench` commands), so that a
//! hospital's GPU tunes once and later runs start warm. cubecl 0.10 fixes its configuration at the
//! first CUDA use in a process, so the call must come before any [`ComputeDevice::Cuda`] work.
//! Measuring the warm start needs a GPU (docs/model.md, "CUDA": run `fedlnm-node bench --device cuda`
//! twice with the same cache folder); it has not been measured on the development machine, which has
//! none.

use super::{Prediction, TrainError, TrainOutcome, TrainingEvent, generic};
use burn::backend::Autodiff;
use burn::backend::flex::{Flex, FlexDevice};
use fedlnm_shared::config::ComputeDevice;
use fedlnm_shared::features::Example;
use fedlnm_shared::model_config::{ModelConfig, TrainPlan};
use fedlnm_shared::weights::NamedTensors;
use std::path::Path;

/// Keeps cubecl's CUDA autotune results in `dir` (created if missing), so that a later process with
/// the same `dir` reuses them instead of benchmarking kernels again.
///
/// On builds without the `cuda` feature this is a no-op that returns `Ok(())` and creates nothing
/// (there is no autotuning on the CPU backend).
///
/// With `cuda`, it installs cubecl's process-wide runtime configuration: the one cubecl would load
/// itself at its first use (`cubecl.toml` or `CubeCL.toml`, else the `[cubecl]` section of
/// `burn.toml`, searched from the working directory upwards; else the defaults; then the
/// `CUBECL_DEBUG_LOG`, `CUBECL_DEBUG_OPTION` and `CUBECL_AUTOTUNE_LEVEL` environment overrides) with
/// only `autotune.cache` replaced by `dir` (made absolute, so that a later change of the working
/// directory does not move it). A `[autotune] cache` in such a file is therefore overridden; every
/// other key is kept. cubecl stores the results under `dir/autotune/<cubecl version>/<device>/`, one
/// append-only `*.json.log` file per tuned operation, and reads them when it creates that
/// operation's tuner (its first use on a device). Each entry carries a checksum of the candidate
/// kernels, so entries written by another build of the kernels are tuned again, never misused.
///
/// Call it before any [`ComputeDevice::Cuda`] work: cubecl reads its configuration once and keeps it
/// for the life of the process. Calling it again with the same `dir` is a no-op returning `Ok(())`,
/// from any thread.
///
/// # Errors
/// [`TrainError::AutotuneCacheDir`] when `dir` cannot be created or made absolute;
/// [`TrainError::AutotuneCacheFixed`] when cubecl's configuration is already fixed with another cache
/// location (CUDA was used before this call, or an earlier call named another folder). Nothing
/// changes then; the cache only saves time, so a caller may log the error and go on.
pub fn use_autotune_cache(dir: &Path) -> Result<(), TrainError> {
    #[cfg(feature = "cuda")]
    {
        autotune::use_cache(dir)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = dir;
        Ok(())
    }
}

/// Expands `$body` with `B` bound to the inner backend and `device` to its device for `$device`.
macro_rules! dispatch {
    ($device:expr, |$backend:ident, $dev:ident| $body:expr) => {
        match $device {
            ComputeDevice::Cpu => {
                type $backend = Flex;
                let $dev = FlexDevice;
                $body
            }
            #[cfg(feature = "cuda")]
            ComputeDevice::Cuda => {
                type $backend = burn::backend::Cuda;
                let $dev = burn::backend::cuda::CudaDevice::default();
                $body
            }
            #[cfg(not(feature = "cuda"))]
            ComputeDevice::Cuda => Err(TrainError::CudaNotBuilt),
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
    device: ComputeDevice,
    config: &ModelConfig,
    initial: &NamedTensors,
    train: &[Example],
    validation: &[Example],
    plan: &TrainPlan,
    progress: &mut dyn FnMut(&TrainingEvent),
) -> Result<TrainOutcome, TrainError> {
    dispatch!(device, |B, dev| generic::train_local::<Autodiff<B>>(
        config, initial, train, validation, plan, &dev, progress
    ))
}

/// AdaBN (Li et al. 2016): the weights `weights` with every batch-normalisation layer's running mean
/// and variance re-estimated on `examples`' inputs (no label is used), every other weight unchanged.
/// For a site that never trained the model (a validate-only site of a FedBN study, whose
/// normalisation statistics would otherwise be the initial ones).
///
/// # Errors
/// Fewer than two examples, or weights that do not fit `config`.
pub fn adapt_normalisation(
    device: ComputeDevice,
    config: &ModelConfig,
    weights: &NamedTensors,
    examples: &[Example],
    seed: u64,
) -> Result<NamedTensors, TrainError> {
    dispatch!(device, |B, dev| generic::adapt_normalisation::<Autodiff<B>>(
        config, weights, examples, seed, &dev
    ))
}

/// Predictions for `examples` (inference mode).
pub fn predict(
    device: ComputeDevice,
    config: &ModelConfig,
    weights: &NamedTensors,
    examples: &[Example],
    batch_size: usize,
) -> Result<Vec<Prediction>, TrainError> {
    dispatch!(device, |B, dev| generic::predict::<B>(
        config, weights, examples, batch_size, &dev
    ))
}

/// Predictions for `examples` as a site scores them: with `adabn_seed`, after re-estimating the
/// normalisation statistics on the examples' own pictures ([`adapt_normalisation`] with that seed;
/// no label is read), otherwise with `weights`' own.
///
/// # Errors
/// As [`adapt_normalisation`] and [`predict`].
pub fn predict_at_site(
    device: ComputeDevice,
    config: &ModelConfig,
    weights: &NamedTensors,
    examples: &[Example],
    batch_size: usize,
    adabn_seed: Option<u64>,
) -> Result<Vec<Prediction>, TrainError> {
    match adabn_seed {
        Some(seed) => {
            let adapted = adapt_normalisation(device, config, weights, examples, seed)?;
            predict(device, config, &adapted, examples, batch_size)
        }
        None => predict(device, config, weights, examples, batch_size),
    }
}

/// Grad-CAM heat maps (side `image.input_size`, values in [0, 1]) of the LNM logit for each example;
/// `None` when the model has no image branch.
pub fn grad_cam(
    device: ComputeDevice,
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
    device: ComputeDevice,
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

/// cubecl's global runtime configuration, read and written without its panicking `set`.
#[cfg(feature = "cuda")]
mod autotune {
    use super::TrainError;
    use cubecl_runtime::config::cache::CacheConfig;
    use cubecl_runtime::config::{CubeClRuntimeConfig, RuntimeConfig as _};
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    /// See [`super::use_autotune_cache`].
    ///
    /// `RuntimeConfig::set` panics once the configuration is set or was read, and checking first
    /// would race with another thread's first CUDA use. So this takes cubecl's own slot
    /// (`RuntimeConfig::storage`, the mutex that `get` and `set` lock) and fills it only while it is
    /// still empty, under that lock: the same effect as `set`, without the panic. The configuration
    /// is loaded before the lock is taken (file reads), so the slot is checked again afterwards.
    pub(super) fn use_cache(dir: &Path) -> Result<(), TrainError> {
        let dir_error = |source| TrainError::AutotuneCacheDir {
            dir: dir.to_owned(),
            source,
        };
        let dir = std::path::absolute(dir).map_err(dir_error)?;
        let current = CubeClRuntimeConfig::storage().lock().clone();
        if let Some(current) = current {
            return accept_fixed(&current, dir);
        }
        std::fs::create_dir_all(&dir).map_err(dir_error)?;
        let mut config = CubeClRuntimeConfig::from_current_dir().override_from_env();
        config.autotune.cache = CacheConfig::File(dir.clone());
        let mut slot = CubeClRuntimeConfig::storage().lock();
        match slot.as_ref() {
            Some(current) => accept_fixed(current, dir),
            None => {
                *slot = Some(Arc::new(config));
                drop(slot);
                tracing::debug!(dir = %dir.display(), "cubecl autotune cache set");
                Ok(())
            }
        }
    }

    /// `Ok` when the fixed configuration already keeps the autotune cache in `dir`.
    fn accept_fixed(current: &CubeClRuntimeConfig, dir: PathBuf) -> Result<(), TrainError> {
        let current = match &current.autotune.cache {
            CacheConfig::File(path) if std::path::absolute(path).is_ok_and(|path| path == dir) => {
                return Ok(());
            }
            CacheConfig::File(path) => path.display().to_string(),
            CacheConfig::Local => "the working directory (`local`)".to_owned(),
            CacheConfig::Target => {
                "cubecl's default (`target`: the nearest Cargo `target/`, else the user cache folder)"
                    .to_owned()
            }
            CacheConfig::Global => "the user configuration folder (`global`)".to_owned(),
        };
        Err(TrainError::AutotuneCacheFixed {
            requested: dir,
            current,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without `cuda` there is nothing to tune: `Ok`, and no folder appears.
    #[cfg(not(feature = "cuda"))]
    #[test]
    fn autotune_cache_is_a_no_op_without_cuda() -> Result<(), Box<dyn std::error::Error>> {
        let root = tempfile::tempdir()?;
        let dir = root.path().join("state").join("cubecl-autotune");
        use_autotune_cache(&dir)?;
        use_autotune_cache(&dir)?;
        assert!(!dir.exists(), "{} was created", dir.display());
        Ok(())
    }

    /// The one test of this binary that touches cubecl's process-wide configuration: it fixes it.
    #[cfg(feature = "cuda")]
    #[test]
    fn autotune_cache_is_set_once_and_read_back() -> Result<(), Box<dyn std::error::Error>> {
        use cubecl_runtime::config::cache::CacheConfig;
        use cubecl_runtime::config::{CubeClRuntimeConfig, RuntimeConfig as _};

        let root = tempfile::tempdir()?;
        let dir = root.path().join("state").join("cubecl-autotune");
        use_autotune_cache(&dir)?;
        assert!(dir.is_dir(), "{} was not created", dir.display());

        let config = CubeClRuntimeConfig::get();
        assert!(
            matches!(&config.autotune.cache, CacheConfig::File(path) if *path == dir),
            "autotune cache is {:?}",
            config.autotune.cache
        );
        assert_eq!(config.autotune.cache.root(), dir);
        // Every other setting as cubecl loads it by itself.
        let mut expected = CubeClRuntimeConfig::from_current_dir().override_from_env();
        expected.autotune.cache = CacheConfig::File(dir.clone());
        assert_eq!(toml::to_string(&*config)?, toml::to_string(&expected)?);

        // Idempotent; another folder is refused without creating it or changing the configuration.
        use_autotune_cache(&dir)?;
        let other = root.path().join("other");
        let refused = use_autotune_cache(&other);
        assert!(
            matches!(&refused, Err(TrainError::AutotuneCacheFixed { requested, .. }) if *requested == other),
            "{refused:?}"
        );
        assert!(!other.exists());
        assert_eq!(CubeClRuntimeConfig::get().autotune.cache.root(), dir);
        Ok(())
    }
}
