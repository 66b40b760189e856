//! Where the model runs: the `--device` parser, and CUDA's kernel autotune cache folder (set before
//! any CUDA work).

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use fedlnm_model::train;
use fedlnm_shared::config::ComputeDevice;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The parser of a `--device` argument: "cpu" or "cuda", each listed with a line in `--help`.
#[must_use]
pub fn device_parser() -> impl TypedValueParser<Value = ComputeDevice> {
    PossibleValuesParser::new(
        ComputeDevice::ALL.map(|device| PossibleValue::new(device.name()).help(help(device))),
    )
    .try_map(|name| name.parse::<ComputeDevice>())
}

/// `device`, after pointing cubecl's autotune cache at its folder when it is CUDA (before any CUDA
/// work): `autotune_cache`, else [`default_autotune_cache_dir`] of this user. A cache that cannot be
/// set is logged and skipped: it only saves time.
#[must_use]
pub fn prepare_device(device: ComputeDevice, autotune_cache: Option<&Path>) -> ComputeDevice {
    if device == ComputeDevice::Cuda {
        let dir = autotune_cache.map_or_else(
            || default_autotune_cache_dir(std::env::var_os("XDG_CACHE_HOME"), std::env::var_os("HOME")),
            Path::to_path_buf,
        );
        prepare_autotune_cache(&dir);
    }
    device
}

/// Points cubecl's autotune cache at `dir` (see [`train::use_autotune_cache`]); on failure, a warning:
/// the run goes on (tuning what the cache cubecl already uses does not hold).
pub fn prepare_autotune_cache(dir: &Path) {
    match train::use_autotune_cache(dir) {
        // Without the `cuda` feature nothing was set (and `--device cuda` fails next, saying why).
        Ok(()) if cfg!(feature = "cuda") => tracing::info!(dir = %dir.display(), "CUDA autotune cache"),
        Ok(()) => {}
        Err(error) => tracing::warn!(%error, "CUDA autotune cache folder not used"),
    }
}

/// The per-user default of `--autotune-cache`, from the values of `XDG_CACHE_HOME` and `HOME`: the XDG
/// cache folder when set to an absolute path (the XDG rule), else `~/.cache`, else the working
/// directory's `.fedlnm-autotune`.
#[must_use]
pub fn default_autotune_cache_dir(xdg_cache_home: Option<OsString>, home: Option<OsString>) -> PathBuf {
    let absolute = |value: Option<OsString>| value.map(PathBuf::from).filter(|path| path.is_absolute());
    if let Some(cache) = absolute(xdg_cache_home) {
        cache.join("fedlnm").join("cubecl-autotune")
    } else if let Some(home) = absolute(home) {
        home.join(".cache").join("fedlnm").join("cubecl-autotune")
    } else {
        PathBuf::from(".fedlnm-autotune")
    }
}

/// The `--help` line of a device.
fn help(device: ComputeDevice) -> &'static str {
    match device {
        ComputeDevice::Cpu => "The CPU (burn Flex backend)",
        ComputeDevice::Cuda => "An NVIDIA GPU (needs a build with `--features cuda`)",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_autotune_cache_dir_follows_xdg_then_home_then_working_directory() {
        let cases: [(Option<&str>, Option<&str>, &str); 6] = [
            (Some("/xdg"), Some("/home/it"), "/xdg/fedlnm/cubecl-autotune"),
            (None, Some("/home/it"), "/home/it/.cache/fedlnm/cubecl-autotune"),
            // The XDG rule: a relative XDG_CACHE_HOME is ignored; so are empty values.
            (
                Some("relative"),
                Some("/home/it"),
                "/home/it/.cache/fedlnm/cubecl-autotune",
            ),
            (
                Some(""),
                Some("/home/it"),
                "/home/it/.cache/fedlnm/cubecl-autotune",
            ),
            (None, Some(""), ".fedlnm-autotune"),
            (None, None, ".fedlnm-autotune"),
        ];
        for (xdg, home, expected) in cases {
            assert_eq!(
                default_autotune_cache_dir(xdg.map(OsString::from), home.map(OsString::from)),
                PathBuf::from(expected),
                "XDG_CACHE_HOME={xdg:?} HOME={home:?}"
            );
        }
    }
}
