//! One module per `fedlnm-node` subcommand.

pub mod stats;
pub mod stats_logistic;
pub mod synth;
