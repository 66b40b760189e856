//! The study report: reads the aggregator's committed rounds (`STATE_DIR/rounds/round-NNNN/round.json`)
//! and writes the tables, figures and summary that the study publishes.
//!
//! Outputs (in the `out` folder, created if missing, existing files overwritten):
//! - `rounds.csv`: one row per round and site, plus one row per pool (`pooled-train`,
//!   `pooled-validation`, with the role of the sites they pool); the columns are [`CSV_COLUMNS`].
//!   Undefined values are empty cells; numbers are written in Rust's shortest round-trip form.
//! - `final_sites.csv`: the same rows for the last committed round only.
//! - `rounds.json`: every [`RoundRecord`], pretty-printed, without the score histograms.
//! - `roc_final.png` ([`ROC_FIGURE_SIZE`]): the last round's ROC curve of each site and of both pools,
//!   drawn from the class-conditional histograms
//!   ([`ScoreHistogram::roc`](fedlnm_shared::federation::ScoreHistogram::roc)).
//! - `auc_by_round.png` ([`AUC_FIGURE_SIZE`]): AUC per round for each site and pool.
//! - `summary.md`: the last round as a markdown table and the pooled AUCs of every round.
//! - `report.html`: the report a clinical reader opens ([`html`]): one self-contained page with every
//!   table and figure (inline SVG), the random-effects summary of the sites' AUCs, the federated odds
//!   ratios of `STATE_DIR/analyses/`, the methods and a TRIPOD+AI / TRIPOD-Cluster checklist.
//!
//! Only committed rounds are read, through the aggregator's own [`RoundStore`](crate::store::RoundStore)
//! opened read-only: which folders are committed rounds and how a `round.json` is parsed is decided
//! there, once. Rounds being written (dot-named folders) are skipped and nothing in the state folder is
//! changed, so the report can run beside a serving aggregator. Every round is read and every output
//! rendered in memory before the first file is written: a bad round file leaves `out` untouched.
//! Figures use an embedded font (DejaVu Sans) and need no font installed on the machine.
//! The input holds aggregate numbers only, and so does every output.
//!
//! This file reads the rounds, renders each output and writes them; each output has its own module
//! (`tables`, `json`, `markdown`, `figures`), over shared pieces: `rounds` (reading the rounds),
//! `pools`, `format` (how values are written), `chart` (drawing with plotters) and `font`.

mod chart;
mod figures;
mod font;
mod json;
mod markdown;
mod rounds;
mod tables;

pub use crate::store::{RECORD_FILE as ROUND_FILE, ROUND_DIR_PREFIX, ROUNDS_DIR, committed_round_number};
pub use tables::CSV_COLUMNS;

use crate::store::StoreError;
use fedlnm_shared::clock::now_rfc3339;
use fedlnm_shared::federation::{HistogramError, RoundRecord};
use fedlnm_shared::stats::StatsError;
use std::path::{Path, PathBuf};

/// Output file names.
pub const ROUNDS_CSV: &str = "rounds.csv";
pub const FINAL_SITES_CSV: &str = "final_sites.csv";
pub const ROUNDS_JSON: &str = "rounds.json";
pub const ROC_FIGURE: &str = "roc_final.png";
pub const AUC_FIGURE: &str = "auc_by_round.png";
pub const SUMMARY_MD: &str = "summary.md";
pub const REPORT_HTML: &str = "report.html";

/// The HTML pages (the study report, the status page, the validation designs), from `fedlnm-report`.
pub use fedlnm_report as html;
/// The `site` column of the two pools' rows.
pub use fedlnm_report::{POOLED_TRAIN, POOLED_VALIDATION};

/// Width and height of the figures, in pixels.
pub const ROC_FIGURE_SIZE: (u32, u32) = (1400, 900);
pub const AUC_FIGURE_SIZE: (u32, u32) = (1200, 800);

/// What [`write_report`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportSummary {
    /// Committed rounds read (round 0 included).
    pub rounds_found: usize,
    /// The last committed round: the one of `final_sites.csv`, the ROC figure and the summary table.
    pub final_round: u64,
    /// Every file written, in the order written.
    pub files_written: Vec<PathBuf>,
}

/// Why the report could not be written. Each message names the file or folder at fault; the
/// underlying I/O, JSON or image error is its [`std::error::Error::source`] (printed after it by the
/// binary), not repeated in the message.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot list the committed rounds in {path}")]
    ListRounds { path: PathBuf, source: std::io::Error },
    #[error(
        "no committed round in {path}: is this the aggregator's state folder, and has round 0 been committed?"
    )]
    NoRounds { path: PathBuf },
    #[error("cannot read {path}")]
    ReadRound { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a valid round record")]
    ParseRound {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path} records round {recorded}, but its folder is that of round {expected}")]
    RoundMismatch {
        path: PathBuf,
        recorded: u64,
        expected: u64,
    },
    #[error("{first} and {second} are both round {round}")]
    DuplicateRound {
        round: u64,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("{path}: the score histogram of '{site}' is unusable")]
    Histogram {
        path: PathBuf,
        site: String,
        source: HistogramError,
    },
    #[error("{path}: cannot compute the ROC curve of '{site}'")]
    Roc {
        path: PathBuf,
        site: String,
        source: StatsError,
    },
    #[error("{path}: the pool {pool} names site '{site}', which has no metrics in that round")]
    UnknownPooledSite {
        path: PathBuf,
        pool: &'static str,
        site: String,
    },
    /// Another problem of the state folder that the round store found, such as a misnamed round
    /// folder (its message names the path).
    #[error(transparent)]
    Store(StoreError),
    #[error("cannot make the table {file}: {message}")]
    Table { file: &'static str, message: String },
    #[error("cannot read the study's stored analyses")]
    Analyses(#[source] StoreError),
    #[error("cannot make {file}")]
    Json {
        file: &'static str,
        source: serde_json::Error,
    },
    #[error("the embedded font for the figures cannot be loaded")]
    Font,
    #[error("cannot draw {file}: {message}")]
    Draw { file: &'static str, message: String },
    #[error("cannot encode {file} as PNG")]
    Png {
        file: &'static str,
        source: image::ImageError,
    },
    #[error("cannot create the output folder {path}")]
    CreateOut { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}")]
    Write { path: PathBuf, source: std::io::Error },
}

impl ReportError {
    /// Whether the state folder is at fault (missing, empty or holding a bad round), rather than the
    /// output folder or the machine.
    #[must_use]
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            Self::ListRounds { .. }
                | Self::NoRounds { .. }
                | Self::ReadRound { .. }
                | Self::ParseRound { .. }
                | Self::RoundMismatch { .. }
                | Self::DuplicateRound { .. }
                | Self::Histogram { .. }
                | Self::Roc { .. }
                | Self::UnknownPooledSite { .. }
                | Self::Analyses(_)
                | Self::Store(_)
        )
    }
}

/// Reads every committed round of `state_dir` in order and writes the report into `out`.
///
/// # Errors
/// A missing or empty rounds folder, an unreadable or invalid `round.json` (named in the error), an
/// unusable histogram in the last round, or a file that cannot be written. Nothing is written unless
/// every round has been read and every output rendered.
pub fn write_report(state_dir: &Path, out: &Path) -> Result<ReportSummary, ReportError> {
    let started = std::time::Instant::now();
    let rounds = rounds::read_committed_rounds(state_dir)?;
    let Some(last) = rounds.last() else {
        return Err(ReportError::NoRounds {
            path: state_dir.join(ROUNDS_DIR),
        });
    };
    let records: Vec<&RoundRecord> = rounds.iter().map(|round| &round.record).collect();
    let analyses = rounds::read_analyses(state_dir)?;
    let generated_at = now_rfc3339();
    let page = html::render(&html::Page {
        records: &records,
        analyses: &analyses,
        live: None,
        generated_at: &generated_at,
    });

    let outputs: Vec<(&str, Vec<u8>)> = vec![
        (ROUNDS_CSV, tables::rows_csv(ROUNDS_CSV, &records)?),
        (
            FINAL_SITES_CSV,
            tables::rows_csv(FINAL_SITES_CSV, &[&last.record])?,
        ),
        (ROUNDS_JSON, json::rounds_json(&records)?),
        (ROC_FIGURE, figures::roc_figure(&last.path, &last.record)?),
        (AUC_FIGURE, figures::auc_figure(&records)?),
        (SUMMARY_MD, markdown::summary_markdown(&records).into_bytes()),
        (REPORT_HTML, page.into_bytes()),
    ];

    std::fs::create_dir_all(out).map_err(|source| ReportError::CreateOut {
        path: out.to_path_buf(),
        source,
    })?;
    let mut files_written = Vec::with_capacity(outputs.len());
    for (name, bytes) in outputs {
        let path = out.join(name);
        std::fs::write(&path, bytes).map_err(|source| ReportError::Write {
            path: path.clone(),
            source,
        })?;
        files_written.push(path);
    }
    tracing::info!(
        rounds = rounds.len(),
        final_round = last.record.round,
        out = %out.display(),
        seconds = started.elapsed().as_secs_f64(),
        "study report written"
    );
    Ok(ReportSummary {
        rounds_found: rounds.len(),
        final_round: last.record.round,
        files_written,
    })
}

/// The live status page: `live` over the report of the rounds committed so far in `state_dir`. A
/// state folder that cannot be read yet (no committed round) or holds a bad round gives the page
/// with the reason instead of the report.
#[must_use]
pub fn status_page(state_dir: &Path, mut live: html::LiveStatus) -> String {
    let read = rounds::read_committed_rounds(state_dir)
        .and_then(|rounds| Ok((rounds, rounds::read_analyses(state_dir)?)));
    let (rounds, analyses) = match read {
        Ok(read) => read,
        Err(error) => {
            tracing::warn!(%error, "the status page shows no report");
            live.progress = format!("{}; the report cannot be shown: {error}", live.progress);
            (Vec::new(), Vec::new())
        }
    };
    let records: Vec<&RoundRecord> = rounds.iter().map(|round| &round.record).collect();
    html::render(&html::Page {
        records: &records,
        analyses: &analyses,
        live: Some(&live),
        generated_at: &now_rfc3339(),
    })
}
