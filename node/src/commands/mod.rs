//! One module per `fedlnm-node` subcommand.

pub mod stats;
pub mod synth;
