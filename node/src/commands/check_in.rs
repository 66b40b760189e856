//! `fedlnm-node check-in`: can this hospital reach the aggregator with its startup kit? Proves the
//! network path (outbound only), mutual TLS and the site's identity, and prints the site's role.

use anyhow::Context as _;
use clap::Args;
use fedlnm_shared::config::NodeConfig;
use std::path::PathBuf;

/// Arguments of `check-in`.
#[derive(Debug, Args)]
pub struct CheckInArgs {
    /// The site's node.toml (from its startup kit).
    #[arg(long, default_value = "node.toml")]
    pub config: PathBuf,
}

/// Loads the config, checks in, prints the answer.
pub fn run(args: &CheckInArgs) -> anyhow::Result<()> {
    let config = NodeConfig::load(&args.config)?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let answer = runtime.block_on(fedlnm_protocol::client::check_in(&config))?;
    println!(
        "checked in: site '{}' is a {} site of study '{}' (aggregator {} at {})",
        answer.site, answer.role, answer.study, answer.aggregator_version, config.aggregator
    );
    Ok(())
}
