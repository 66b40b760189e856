//! `fedlnm-node stats`: the statistics engine over CSV files, one JSON object on standard output.

use clap::Subcommand;

/// The statistics subcommands.
#[derive(Debug, Subcommand)]
pub enum StatsCommand {
    /// Adjusted odds ratios: logistic regression of a 0/1 outcome (LNM) on covariates, optionally
    /// pooled across hospitals the federated way.
    Logistic(super::stats_logistic::LogisticArgs),
}

/// Runs one `stats` subcommand.
pub fn run(command: StatsCommand) -> anyhow::Result<()> {
    match command {
        StatsCommand::Logistic(args) => super::stats_logistic::run(&args),
    }
}
