//! The `fedlnm-node` binary: parse the command line, run, turn any error into a one-line message and
//! an exit code (2: bad input or usage, 1: anything else).

use clap::Parser as _;
use fedlnm_shared::process::{self, LogFormat};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = fedlnm_node::Cli::parse();
    let log_format = match LogFormat::chosen(cli.log_format) {
        Ok(format) => format,
        Err(error) => {
            eprintln!("fedlnm-node: error: {}: {error}", process::LOG_FORMAT_ENV);
            return ExitCode::from(2);
        }
    };
    process::init_logging_as(log_format);
    match fedlnm_node::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // The line that ends the run; as JSON, one more event, so that every line of the log parses.
            let message = process::one_line(&error);
            match log_format {
                LogFormat::Text => eprintln!("fedlnm-node: error: {message}"),
                LogFormat::Json => tracing::error!("{message}"),
            }
            ExitCode::from(fedlnm_node::cli::exit_code(&error))
        }
    }
}
