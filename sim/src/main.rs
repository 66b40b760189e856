//! The `fedlnm-sim` binary: the simulated multicentre study in one command.

use clap::Parser as _;
use std::process::ExitCode;

fn main() -> ExitCode {
    fedlnm_shared::process::init_logging();
    match fedlnm_sim::run(&fedlnm_sim::SimulateArgs::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("fedlnm-sim: error: {error:#}");
            ExitCode::from(fedlnm_shared::process::exit_code(&error, |cause| {
                cause.is::<fedlnm_aggregator::provision::ProvisionError>()
            }))
        }
    }
}
