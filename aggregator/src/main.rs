//! The `fedlnm-aggregator` binary (the federation server arrives with the federation issue).

use clap::Parser;

/// fedlnm aggregator: the study's only server. It combines the sites' masked model updates and never
/// sees a patient record.
#[derive(Debug, Parser)]
#[command(name = "fedlnm-aggregator", version, about, long_about = None)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
}
