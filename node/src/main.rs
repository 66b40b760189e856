//! The `fedlnm-node` binary: parse the command line, run, turn any error into a one-line message and
//! an exit code (2: bad input or usage, 1: anything else).

use clap::Parser as _;
use std::process::ExitCode;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FEDLNM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = fedlnm_node::Cli::parse();
    match fedlnm_node::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("fedlnm-node: error: {error:#}");
            ExitCode::from(fedlnm_node::cli::exit_code(&error))
        }
    }
}
