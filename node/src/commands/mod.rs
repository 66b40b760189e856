//! One module per `fedlnm-node` subcommand.

pub mod check_data;
pub mod check_in;
pub mod compare;
pub mod federate;
pub mod model;
pub mod quality;
pub mod site_report;
pub mod stats;
pub mod stats_logistic;
pub mod synth;

use anyhow::{Context as _, bail};
use std::path::Path;

/// Creates the output folder `dir`, refusing one that exists with anything in it (`who` never
/// overwrites results, as the message says).
///
/// # Errors
/// A non-empty folder, or one that cannot be created.
pub fn create_output_dir(dir: &Path, who: &str) -> anyhow::Result<()> {
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        bail!(
            "{} is not empty: choose a new --out folder ({who} never overwrites results)",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))
}
