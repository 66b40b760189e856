//! The `fedlnm-aggregator` binary: parse the command line, run, turn any error into a one-line message
//! and an exit code (2: bad input or usage, 1: anything else).

use anyhow::Context as _;
use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::{Parser, Subcommand};
use fedlnm_aggregator::provision::{self, ProvisionOptions};
use fedlnm_aggregator::report::{self, ReportError};
use fedlnm_aggregator::server;
use fedlnm_shared::config::{AggregatorConfig, SiteRole};
use fedlnm_shared::process::{self, LogFormat};
use std::path::PathBuf;
use std::process::ExitCode;

/// fedlnm aggregator: the study's only server. It combines the sites' masked model updates and never
/// sees a patient record.
#[derive(Debug, Parser)]
#[command(name = "fedlnm-aggregator", version, about, long_about = None)]
struct Cli {
    /// How the log on standard error is written: `text` (the default; colours on a terminal only) or
    /// `json` (one object per line, for a log collector). Default: $FEDLNM_LOG_FORMAT, else text.
    #[arg(long, global = true, value_name = "FORMAT", value_parser = log_format_parser())]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

/// The parser of `--log-format`: "text" or "json", each listed in `--help`.
fn log_format_parser() -> impl TypedValueParser<Value = LogFormat> {
    PossibleValuesParser::new(LogFormat::ALL.map(|format| PossibleValue::new(format.name())))
        .try_map(|name| name.parse::<LogFormat>())
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the aggregator: listen for the study's sites over mutual TLS 1.3 (one TCP port; it never
    /// opens a connection to a hospital). Stops cleanly on Ctrl-C or SIGTERM.
    Serve {
        /// The aggregator's configuration (made by `provision`).
        #[arg(long, default_value = "aggregator.toml")]
        config: PathBuf,
        /// Exit (code 0) once the study is finished and every site has been sent the final model,
        /// after `--finished-grace-s` for the last downloads. Without it the aggregator keeps serving
        /// the finished study (sites that start later still get the final model) until it is stopped.
        #[arg(long)]
        exit_when_finished: bool,
        /// Seconds `--exit-when-finished` keeps serving after the last site was told.
        #[arg(long, default_value_t = 60, requires = "exit_when_finished")]
        finished_grace_s: u64,
    },
    /// Create a new study: its certificate authority, the aggregator's certificate and one startup kit
    /// per site (certificate, private key, CA certificate, ready node.toml) under OUT/sites/<site>/.
    /// Hand each kit to its hospital over a secure channel; keep OUT/ca/ca.key offline.
    Provision {
        /// Study id (letters, digits, '-', '_').
        #[arg(long)]
        study: String,
        /// Training sites, comma-separated (e.g. S1,S2,S3).
        #[arg(long, value_delimiter = ',', required = true)]
        sites: Vec<String>,
        /// External-validation sites, comma-separated: they never train, only score each model.
        #[arg(long, value_delimiter = ',')]
        validate_sites: Vec<String>,
        /// Host names or IP addresses of the aggregator as nodes will dial it (the first goes in node.toml).
        #[arg(long, value_delimiter = ',', default_value = "localhost,127.0.0.1")]
        aggregator_hosts: Vec<String>,
        /// TCP port the aggregator will listen on.
        #[arg(long, default_value_t = 50051)]
        port: u16,
        /// How long the certificates stay valid, in days.
        #[arg(long, default_value_t = 365)]
        valid_days: i64,
        /// Folder to create (must not exist or be empty).
        #[arg(long)]
        out: PathBuf,
    },
    /// Issue one more startup kit in an existing study folder and add the site to aggregator.toml,
    /// touching no other site's files. Restart the aggregator to admit the new site.
    AddSite {
        /// The study folder made by `provision`.
        #[arg(long)]
        study_dir: PathBuf,
        /// The new site's id.
        #[arg(long)]
        site: String,
        /// `train` or `validate`.
        #[arg(long, default_value = "train")]
        role: SiteRole,
        /// How long the certificate stays valid, in days.
        #[arg(long, default_value_t = 365)]
        valid_days: i64,
    },
    /// Issue a new certificate and key for a site of the study (its certificate expiring or expired, or
    /// its key lost) into a new folder: site.pem, site.key, ca.pem. The hospital puts them in place of
    /// the same files of its startup kit and restarts its node; nothing else changes.
    RenewSite {
        /// The study folder made by `provision`.
        #[arg(long)]
        study_dir: PathBuf,
        /// The site's id.
        #[arg(long)]
        site: String,
        /// How long the new certificate stays valid, in days.
        #[arg(long, default_value_t = 365)]
        valid_days: i64,
        /// Folder to create for the new files (must not exist).
        #[arg(long)]
        out: PathBuf,
    },
    /// Write the study report from the rounds and analyses the aggregator has saved: report.html (the
    /// page a clinical reader opens: every table and figure, self-contained), tables (rounds.csv,
    /// final_sites.csv, rounds.json), figures (roc_final.png, auc_by_round.png) and summary.md. It only
    /// reads the state folder, so it can run while the aggregator is serving; it reports the rounds
    /// completed so far. Contains aggregate numbers only, no patient data.
    Report {
        /// The aggregator's state folder (the one holding `rounds/`).
        #[arg(long)]
        state_dir: PathBuf,
        /// Folder to write the report into (created if missing; files already there are replaced).
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_format = match LogFormat::chosen(cli.log_format) {
        Ok(format) => format,
        Err(error) => {
            eprintln!("fedlnm-aggregator: error: {}: {error}", process::LOG_FORMAT_ENV);
            return ExitCode::from(2);
        }
    };
    process::init_logging_as(log_format);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // The line that ends the run; as JSON, one more event, so that every line of the log parses.
            let message = process::one_line(&error);
            match log_format {
                LogFormat::Text => eprintln!("fedlnm-aggregator: error: {message}"),
                LogFormat::Json => tracing::error!("{message}"),
            }
            ExitCode::from(process::exit_code(&error, |cause| {
                cause.is::<provision::ProvisionError>()
                    || cause
                        .downcast_ref::<ReportError>()
                        .is_some_and(ReportError::is_bad_input)
            }))
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve {
            config,
            exit_when_finished,
            finished_grace_s,
        } => {
            let grace = std::time::Duration::from_secs(finished_grace_s);
            let config = AggregatorConfig::load(&config)?;
            let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            runtime.block_on(async {
                // The state first: "listening" is said only by an aggregator that can serve the study.
                let listen = config.listen.clone();
                let service =
                    server::FederationService::open(config).context("cannot open the study's state")?;
                let listener = fedlnm_protocol::server::bind(&listen)
                    .await
                    .with_context(|| format!("cannot listen on {listen}"))?;
                let signals = fedlnm_protocol::signals::StopSignals::watch();
                #[cfg(unix)]
                {
                    // Past a file-size limit (RLIMIT_FSIZE) a write should fail with an error the
                    // commit reports, not kill the process: a handler replaces SIGXFSZ's default.
                    use tokio::signal::unix::{SignalKind, signal};
                    let _handled = signal(SignalKind::from_raw(libc::SIGXFSZ));
                }
                println!("listening on {}", listener.local_addr()?);
                let finished = {
                    let service = service.clone();
                    async move {
                        if !exit_when_finished {
                            return std::future::pending().await;
                        }
                        service.every_site_finished().await;
                        tracing::info!(
                            grace_s = finished_grace_s,
                            "the study is finished and every site has its final model's reference; \
                             exiting after the grace period (--exit-when-finished)"
                        );
                        tokio::time::sleep(grace).await;
                    }
                };
                let shutdown = async {
                    tokio::select! {
                        signal = signals.first() => tracing::info!(
                            signal,
                            "stopping: the round in progress is not committed; the next start resumes \
                             after the last committed round"
                        ),
                        () = finished => tracing::info!("study finished; the aggregator exits"),
                    }
                };
                server::serve(service, listener, shutdown)
                    .await
                    .context("the aggregator stopped")
            })?;
        }
        Command::Provision {
            study,
            sites,
            validate_sites,
            aggregator_hosts,
            port,
            valid_days,
            out,
        } => {
            let options = ProvisionOptions {
                study,
                train_sites: sites,
                validate_sites,
                aggregator_hosts,
                port,
                valid_days,
                out: out.clone(),
            };
            let config = provision::provision(&options)
                .with_context(|| format!("cannot provision {}", out.display()))?;
            println!("study '{}' provisioned in {}", config.study, out.display());
            for warning in provision::warnings(&config) {
                println!("warning: {warning}");
            }
            println!(
                "  aggregator: {}",
                out.join(provision::AGGREGATOR_DIR)
                    .join("aggregator.toml")
                    .display()
            );
            for site in &config.sites {
                println!(
                    "  site {} ({}): {}",
                    site.id,
                    site.role,
                    out.join(provision::SITES_DIR).join(&site.id).display()
                );
            }
            println!(
                "Keep {} offline: it signs every certificate of the study.",
                out.join(provision::CA_KEY).display()
            );
        }
        Command::AddSite {
            study_dir,
            site,
            role,
            valid_days,
        } => {
            let kit = provision::add_site(&study_dir, &site, role, valid_days)
                .with_context(|| format!("cannot add site '{site}' to {}", study_dir.display()))?;
            println!("startup kit for site '{site}' written to {}", kit.display());
        }
        Command::RenewSite {
            study_dir,
            site,
            valid_days,
            out,
        } => {
            provision::renew_site(&study_dir, &site, valid_days, &out)
                .with_context(|| format!("cannot renew the certificate of site '{site}'"))?;
            println!(
                "new certificate and key of site '{site}' written to {}: replace site.pem and site.key of its \
                 startup kit with them, then restart its node",
                out.display()
            );
        }
        Command::Report { state_dir, out } => {
            let summary = report::write_report(&state_dir, &out)
                .with_context(|| format!("cannot write the study report from {}", state_dir.display()))?;
            println!(
                "report of {} rounds (final round {}) written to {}:",
                summary.rounds_found,
                summary.final_round,
                out.display()
            );
            for file in &summary.files_written {
                println!("  {}", file.display());
            }
        }
    }
    Ok(())
}
