//! One module per `fedlnm-node` subcommand.

pub mod model;
pub mod stats;
pub mod stats_logistic;
