//! The `fedlnm-node` binary: parse the command line, run, turn any error into a one-line message and
//! an exit code (2: bad input or usage, 1: anything else).

use clap::Parser as _;
use std::process::ExitCode;

fn main() -> ExitCode {
    fedlnm_shared::process::init_logging();
    match fedlnm_node::run(fedlnm_node::Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("fedlnm-node: error: {error:#}");
            ExitCode::from(fedlnm_node::cli::exit_code(&error))
        }
    }
}
