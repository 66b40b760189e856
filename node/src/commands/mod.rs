//! One module per `fedlnm-node` subcommand.

pub mod check_data;
pub mod check_in;
pub mod model;
pub mod stats;
pub mod stats_logistic;
pub mod synth;
