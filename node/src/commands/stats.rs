//! `fedlnm-node stats`: the statistics engine over CSV files, one JSON object on standard output.

use clap::Subcommand;

/// The statistics subcommands.
#[derive(Debug, Subcommand)]
pub enum StatsCommand {}

/// Runs one `stats` subcommand.
pub fn run(command: StatsCommand) -> anyhow::Result<()> {
    match command {}
}
