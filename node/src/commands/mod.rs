//! One module per `fedlnm-node` subcommand.

pub mod check_data;
pub mod check_in;
pub mod federate;
pub mod model;
pub mod quality;
pub mod simulate;
pub mod stats;
pub mod stats_logistic;
pub mod synth;
