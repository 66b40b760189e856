//! What every fedlnm binary does around its `run`: logging set-up (to standard error, filtered by
//! `FEDLNM_LOG`, default `info`), and turning the error that ended it into one line a hospital IT
//! person can act on and an exit code: 2 for bad input or usage (a file, a setting, an argument), 1 for
//! anything else.

use std::error::Error;
use std::io::IsTerminal as _;

/// Installs the `tracing` subscriber of a binary: colours on a terminal only, so that a log written to
/// a file or a journal has no escape codes.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FEDLNM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
}

/// Whether `cause` is one of this library's errors that mean the input is at fault.
#[must_use]
pub fn is_input_error(cause: &(dyn Error + 'static)) -> bool {
    cause.is::<crate::stats::StatsError>()
        || cause.is::<crate::stats::logistic::LogisticError>()
        || cause.is::<crate::data::ManifestError>()
        || cause.is::<crate::table::InputError>()
        || cause.is::<crate::config::ConfigError>()
        || cause.is::<crate::weights::WeightsError>()
        || cause.is::<crate::checkpoint::CheckpointError>()
}

/// The exit code of `error`: 2 when any cause is an input error of this library or one that
/// `is_binary_input_error` recognises, else 1.
#[must_use]
pub fn exit_code(
    error: &anyhow::Error,
    is_binary_input_error: impl Fn(&(dyn Error + 'static)) -> bool,
) -> u8 {
    let input_fault = error
        .chain()
        .any(|cause| is_input_error(cause) || is_binary_input_error(cause));
    if input_fault { 2 } else { 1 }
}
