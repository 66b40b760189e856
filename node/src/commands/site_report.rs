//! `fedlnm-node site-report`: the site's own report, for the hospital only: the study report's
//! tables and figures on this site's patients alone, read from the node's own validation records
//! (`work_dir/validation/round-NNNN.json`), plus Grad-CAM overlays of chosen patients under the final
//! global model. Nothing of it is sent anywhere.

use super::model::{ExplainJob, explain_patients};
use crate::federation::{FINAL_MODEL_FILE, OWN_RECORDS_DIR};
use anyhow::{Context as _, bail};
use clap::Args;
use fedlnm_report::site::{Overlay, SitePage, site_page};
use fedlnm_shared::config::{ComputeDevice, NodeConfig};
use fedlnm_shared::federation::SiteValidation;
use std::path::{Path, PathBuf};

/// The report's file in the output folder.
pub const SITE_REPORT_FILE: &str = "site-report.html";

/// Arguments of `site-report`.
#[derive(Debug, Args)]
pub struct SiteReportArgs {
    /// The site's node.toml (its work_dir holds the records; its data folder the patients).
    #[arg(long, default_value = "node.toml")]
    pub config: PathBuf,
    /// Output folder (created if missing): site-report.html, and the Grad-CAM PNGs in gradcam/.
    #[arg(long)]
    pub out: PathBuf,
    /// Pseudonymous ids of patients whose Grad-CAM overlay under the final global model the report
    /// shows (repeat the option; none: no overlay). Needs the study to have finished.
    #[arg(long = "explain", value_name = "PATIENT_ID")]
    pub explain: Vec<String>,
}

/// What to write: the plain-data form of the command line.
#[derive(Debug, Clone)]
pub struct SiteReportJob {
    pub site: String,
    pub study: String,
    pub work_dir: PathBuf,
    pub data: PathBuf,
    pub device: ComputeDevice,
    pub out: PathBuf,
    pub explain: Vec<String>,
}

impl SiteReportJob {
    /// The job of a node's configuration.
    #[must_use]
    pub fn of_node(config: &NodeConfig, out: &Path, explain: Vec<String>) -> Self {
        Self {
            site: config.site.clone(),
            study: config.study.clone(),
            work_dir: config.work_dir.clone(),
            data: config.data.clone(),
            device: config.device,
            out: out.to_path_buf(),
            explain,
        }
    }
}

/// Loads the config and writes the report.
pub fn run(args: &SiteReportArgs) -> anyhow::Result<()> {
    let config = NodeConfig::load(&args.config)?;
    let file = write_site_report(&SiteReportJob::of_node(&config, &args.out, args.explain.clone()))?;
    println!("site report written: {} (for this hospital only)", file.display());
    Ok(())
}

/// The node's own records, `(round, record)` in round order.
///
/// # Errors
/// An unreadable records folder or record (named).
pub fn own_records(work_dir: &Path) -> anyhow::Result<Vec<(u64, SiteValidation)>> {
    let dir = work_dir.join(OWN_RECORDS_DIR);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error).with_context(|| format!("cannot list {}", dir.display())),
    };
    let mut records = Vec::new();
    for entry in entries {
        let path = entry
            .with_context(|| format!("cannot list {}", dir.display()))?
            .path();
        let Some(round) = path
            .file_name()
            .and_then(|name| name.to_str())
            .and_then(|name| name.strip_prefix("round-")?.strip_suffix(".json"))
            .and_then(|digits| digits.parse::<u64>().ok())
        else {
            continue;
        };
        let bytes = fedlnm_shared::files::read_regular(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let record: SiteValidation = serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a validation record of this node", path.display()))?;
        records.push((round, record));
    }
    records.sort_by_key(|(round, _)| *round);
    Ok(records)
}

/// Writes `site-report.html` (and the overlays it shows) into the job's output folder; returns the
/// report's path.
///
/// # Errors
/// Unreadable records, overlays asked for before the study finished (no final model), a patient
/// that is not an included patient of the site, or an output that cannot be written (named).
pub fn write_site_report(job: &SiteReportJob) -> anyhow::Result<PathBuf> {
    let rounds = own_records(&job.work_dir)?;
    std::fs::create_dir_all(&job.out).with_context(|| format!("cannot create {}", job.out.display()))?;
    let mut overlays = Vec::new();
    if !job.explain.is_empty() {
        let checkpoint = job.work_dir.join(FINAL_MODEL_FILE);
        if !checkpoint.is_file() {
            bail!(
                "no final global model in {} yet: Grad-CAM overlays need the finished study's model",
                job.work_dir.display()
            );
        }
        let files = explain_patients(&ExplainJob {
            checkpoint,
            data: job.data.clone(),
            patients: job.explain.clone(),
            out: job.out.join("gradcam"),
            device: job.device,
        })?;
        for (patient_id, file) in job.explain.iter().zip(files) {
            let png = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            overlays.push(Overlay {
                patient_id: patient_id.clone(),
                png,
            });
        }
    }
    let generated_at = fedlnm_shared::clock::now_rfc3339();
    let page = site_page(&SitePage {
        site: &job.site,
        study: &job.study,
        rounds: &rounds,
        overlays: &overlays,
        generated_at: &generated_at,
    });
    let file = job.out.join(SITE_REPORT_FILE);
    std::fs::write(&file, page).with_context(|| format!("cannot write {}", file.display()))?;
    Ok(file)
}
