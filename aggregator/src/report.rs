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
//!   drawn from the class-conditional histograms ([`ScoreHistogram::roc`]).
//! - `auc_by_round.png` ([`AUC_FIGURE_SIZE`]): AUC per round for each site and pool.
//! - `summary.md`: the last round as a markdown table and the pooled AUCs of every round.
//!
//! Only committed rounds are read: entries whose name starts with `.` (rounds being written) are
//! skipped, so the report can run beside a serving aggregator. Every round is read and every output
//! rendered in memory before the first file is written: a bad round file leaves `out` untouched.
//! Figures use an embedded font (DejaVu Sans) and need no font installed on the machine.
//! The input holds aggregate numbers only, and so does every output.

use fedlnm_shared::config::SiteRole;
use fedlnm_shared::federation::{HistogramError, PooledMetrics, RoundRecord, ScoreHistogram};
use fedlnm_shared::stats::StatsError;
use image::ImageEncoder as _;
use plotters::prelude::*;
use plotters::style::FontStyle;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The folder of committed rounds inside the aggregator's state folder.
pub const ROUNDS_DIR: &str = "rounds";
/// A committed round's record inside its `round-NNNN` folder.
pub const ROUND_FILE: &str = "round.json";
/// The prefix of a committed round's folder (followed by at least 4 digits).
pub const ROUND_DIR_PREFIX: &str = "round-";

/// Output file names.
pub const ROUNDS_CSV: &str = "rounds.csv";
pub const FINAL_SITES_CSV: &str = "final_sites.csv";
pub const ROUNDS_JSON: &str = "rounds.json";
pub const ROC_FIGURE: &str = "roc_final.png";
pub const AUC_FIGURE: &str = "auc_by_round.png";
pub const SUMMARY_MD: &str = "summary.md";

/// The `site` column of the two pools' rows.
pub const POOLED_TRAIN: &str = "pooled-train";
pub const POOLED_VALIDATION: &str = "pooled-validation";

/// Width and height of the figures, in pixels.
pub const ROC_FIGURE_SIZE: (u32, u32) = (1400, 900);
pub const AUC_FIGURE_SIZE: (u32, u32) = (1200, 800);

/// The columns of `rounds.csv` and `final_sites.csv`, in order.
pub const CSV_COLUMNS: [&str; 20] = [
    "round",
    "site",
    "role",
    "n_patients",
    "n_positive",
    "lnm_rate",
    "auc",
    "auc_ci_lower",
    "auc_ci_upper",
    "youden_threshold",
    "sensitivity",
    "specificity",
    "brier",
    "kappa_t",
    "kappa_n",
    "kappa_stage",
    "contributors",
    "total_samples",
    "aggregation",
    "model_digest",
];

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
    #[error("{path}: the score histogram of site '{site}' is unusable")]
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
    #[error("cannot make the table {file}: {message}")]
    Table { file: &'static str, message: String },
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
    let rounds = read_committed_rounds(&state_dir.join(ROUNDS_DIR))?;
    let Some(last) = rounds.last() else {
        return Err(ReportError::NoRounds {
            path: state_dir.join(ROUNDS_DIR),
        });
    };
    let records: Vec<&RoundRecord> = rounds.iter().map(|round| &round.record).collect();

    let outputs: Vec<(&str, Vec<u8>)> = vec![
        (ROUNDS_CSV, rows_csv(ROUNDS_CSV, &records)?),
        (FINAL_SITES_CSV, rows_csv(FINAL_SITES_CSV, &[&last.record])?),
        (ROUNDS_JSON, rounds_json(&records)?),
        (ROC_FIGURE, roc_figure(&last.path, &last.record)?),
        (AUC_FIGURE, auc_figure(&records)?),
        (SUMMARY_MD, summary_markdown(&records).into_bytes()),
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

/// The round number of a committed round's folder name: `round-` and at least 4 digits.
/// `None` for anything else, including `.round-0003.partial` (a round being written).
#[must_use]
pub fn committed_round_number(folder_name: &str) -> Option<u64> {
    let digits = folder_name.strip_prefix(ROUND_DIR_PREFIX)?;
    if digits.len() < 4 || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// One committed round as read from disk.
struct CommittedRound {
    /// Its `round.json`, for error messages.
    path: PathBuf,
    /// Only the last round keeps its histograms (the ROC figure needs them; the rest would only take
    /// memory: 160 kB per site and round).
    record: RoundRecord,
}

/// Every committed round under `rounds_dir`, in round order.
fn read_committed_rounds(rounds_dir: &Path) -> Result<Vec<CommittedRound>, ReportError> {
    let list_error = |source| ReportError::ListRounds {
        path: rounds_dir.to_path_buf(),
        source,
    };
    let mut folders: Vec<(u64, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(rounds_dir).map_err(list_error)? {
        let entry = entry.map_err(list_error)?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') {
            tracing::debug!(entry = %name, "skipping an uncommitted round");
            continue;
        }
        match committed_round_number(&name) {
            Some(round) if entry.path().is_dir() => folders.push((round, entry.path())),
            _ => tracing::warn!(entry = %entry.path().display(), "not a committed round folder: skipped"),
        }
    }
    folders.sort();
    if let Some(pair) = folders.windows(2).find(|pair| pair[0].0 == pair[1].0) {
        return Err(ReportError::DuplicateRound {
            round: pair[0].0,
            first: pair[0].1.clone(),
            second: pair[1].1.clone(),
        });
    }

    let last_index = folders.len().saturating_sub(1);
    let mut rounds = Vec::with_capacity(folders.len());
    for (index, (round, folder)) in folders.into_iter().enumerate() {
        let path = folder.join(ROUND_FILE);
        let bytes = std::fs::read(&path).map_err(|source| ReportError::ReadRound {
            path: path.clone(),
            source,
        })?;
        let mut record: RoundRecord =
            serde_json::from_slice(&bytes).map_err(|source| ReportError::ParseRound {
                path: path.clone(),
                source,
            })?;
        if record.round != round {
            return Err(ReportError::RoundMismatch {
                path,
                recorded: record.round,
                expected: round,
            });
        }
        if index != last_index {
            for site in &mut record.sites {
                site.histogram = ScoreHistogram {
                    positive: Vec::new(),
                    negative: Vec::new(),
                };
            }
        }
        rounds.push(CommittedRound { path, record });
    }
    Ok(rounds)
}

// ---------------------------------------------------------------------------------------------------
// Tables

/// The CSV rows of some rounds: each site, then the training pool, then the validation pool.
fn rows_csv(file: &'static str, records: &[&RoundRecord]) -> Result<Vec<u8>, ReportError> {
    let table_error = |error: csv::Error| ReportError::Table {
        file,
        message: error.to_string(),
    };
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer.write_record(CSV_COLUMNS).map_err(table_error)?;
    for record in records {
        let round_cells = [
            record.contributors.join(";"),
            record.total_samples.to_string(),
            aggregation_name(record),
            record.model_digest.clone(),
        ];
        for site in &record.sites {
            let mut row = vec![
                record.round.to_string(),
                site.site.clone(),
                site.role.to_string(),
                site.n_patients.to_string(),
                site.n_positive.to_string(),
                number(Some(site.lnm_rate)),
                number(site.auc),
                number(site.auc_ci_lower),
                number(site.auc_ci_upper),
                number(site.youden_threshold),
                number(site.sensitivity),
                number(site.specificity),
                number(Some(site.brier)),
                number(site.kappa_t),
                number(site.kappa_n),
                number(site.kappa_stage),
            ];
            row.extend(round_cells.iter().cloned());
            writer.write_record(&row).map_err(table_error)?;
        }
        for (name, role, pool) in pools(record) {
            // A pool has only counts and the AUC: the threshold, Brier score and kappas are per site.
            let mut row = vec![
                record.round.to_string(),
                name.to_owned(),
                role.to_string(),
                pool.n_patients.to_string(),
                pool.n_positive.to_string(),
                number(pooled_lnm_rate(pool)),
                number(pool.auc),
                number(pool.auc_ci_lower),
                number(pool.auc_ci_upper),
            ];
            row.extend(std::iter::repeat_n(String::new(), 7));
            row.extend(round_cells.iter().cloned());
            writer.write_record(&row).map_err(table_error)?;
        }
    }
    writer.into_inner().map_err(|error| ReportError::Table {
        file,
        message: error.error().to_string(),
    })
}

/// `rounds.json`: the records without their histograms.
fn rounds_json(records: &[&RoundRecord]) -> Result<Vec<u8>, ReportError> {
    let json_error = |source| ReportError::Json {
        file: ROUNDS_JSON,
        source,
    };
    let mut rounds = Vec::with_capacity(records.len());
    for record in records {
        let mut value = serde_json::to_value(record).map_err(json_error)?;
        if let Some(sites) = value.get_mut("sites").and_then(serde_json::Value::as_array_mut) {
            for site in sites.iter_mut().filter_map(serde_json::Value::as_object_mut) {
                site.shift_remove("histogram");
            }
        }
        rounds.push(value);
    }
    let mut bytes = serde_json::to_vec_pretty(&rounds).map_err(json_error)?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// `summary.md`: the last round's table, then the pooled AUCs of every round.
fn summary_markdown(records: &[&RoundRecord]) -> String {
    let mut text = String::new();
    let Some(last) = records.last() else {
        return text;
    };
    // Writing into a String cannot fail: the `let _ =` below discard an always-Ok result.
    let _ = writeln!(text, "## Study `{}`: final round {}\n", last.study, last.round);
    if last.contributors.is_empty() {
        let _ = writeln!(
            text,
            "Model `{}`: the initial model, before any training round.\n",
            short_digest(&last.model_digest),
        );
    } else {
        let _ = writeln!(
            text,
            "Model `{}`: {} aggregation of {} ({} training patients).\n",
            short_digest(&last.model_digest),
            aggregation_name(last),
            last.contributors.join(", "),
            last.total_samples
        );
    }
    text.push_str(
        "| site | role | n | LNM rate | AUC (95% CI) | sensitivity / specificity at Youden | quadratic kappa T / N / stage |\n",
    );
    text.push_str("|---|---|---:|---:|---|---|---|\n");
    for site in &last.sites {
        let _ = writeln!(
            text,
            "| {} | {} | {} | {} | {} | {} / {} | {} / {} / {} |",
            site.site,
            site.role,
            site.n_patients,
            percent(Some(site.lnm_rate)),
            auc_with_ci(site.auc, site.auc_ci_lower, site.auc_ci_upper),
            fixed(site.sensitivity),
            fixed(site.specificity),
            fixed(site.kappa_t),
            fixed(site.kappa_n),
            fixed(site.kappa_stage),
        );
    }
    for (name, role, pool) in pools(last) {
        let _ = writeln!(
            text,
            "| **{name}** ({}) | {role} | {} | {} | {} | — | — |",
            pool.sites.join(", "),
            pool.n_patients,
            percent(pooled_lnm_rate(pool)),
            auc_with_ci(pool.auc, pool.auc_ci_lower, pool.auc_ci_upper),
        );
    }
    text.push_str("\nPooled AUC (95% CI) by round:\n\n");
    for record in records {
        if record.sites.is_empty() {
            let _ = writeln!(
                text,
                "- round {}: {} (no site validated it)",
                record.round,
                if record.round == 0 {
                    "the initial model"
                } else {
                    "model"
                }
            );
            continue;
        }
        let pooled = |pool: Option<&PooledMetrics>| {
            pool.map_or_else(
                || "no site".to_owned(),
                |pool| auc_with_ci(pool.auc, pool.auc_ci_lower, pool.auc_ci_upper),
            )
        };
        let _ = writeln!(
            text,
            "- round {}: training sites {}; validation sites {}",
            record.round,
            pooled(record.pooled_train_sites.as_ref()),
            pooled(record.pooled_validation_sites.as_ref()),
        );
    }
    text
}

// ---------------------------------------------------------------------------------------------------
// Figures

/// The name the figures' font is registered under (plotters' `FontFamily::SansSerif`).
const FONT_FAMILY: &str = "sans-serif";

/// Registers the embedded DejaVu Sans for plotters' `ab_glyph` text, once per process.
///
/// DejaVu Sans (from the `dejavu` crate) is under the Bitstream Vera licence with DejaVu's changes in
/// the public domain: free to embed and redistribute, provided the notice travels with the fonts
/// (`aggregator/licenses/DejaVu-LICENSE.txt`). No system font or fontconfig is ever consulted.
fn register_font() -> Result<(), ReportError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let registered = *REGISTERED.get_or_init(|| {
        plotters::style::register_font(FONT_FAMILY, FontStyle::Normal, dejavu::sans::regular()).is_ok()
    });
    if registered {
        Ok(())
    } else {
        Err(ReportError::Font)
    }
}

/// One line of a figure and its legend entry.
struct Curve {
    label: String,
    colour: RGBColor,
    width: u32,
    dashed: bool,
    /// Runs of connected points (a gap splits a run).
    runs: Vec<Vec<(f64, f64)>>,
}

const POOLED_TRAIN_COLOUR: RGBColor = RGBColor(0, 0, 0);
const POOLED_VALIDATION_COLOUR: RGBColor = RGBColor(90, 90, 90);
const REFERENCE_COLOUR: RGBColor = RGBColor(160, 160, 160);

/// Distinct, saturated colours for the first sites (Tableau 10 without its grey, which the pools use);
/// plotters' 99-colour palette after them.
const SITE_COLOURS: [RGBColor; 9] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

fn site_colour(index: usize) -> RGBColor {
    SITE_COLOURS.get(index).copied().unwrap_or_else(|| {
        let (r, g, b) = Palette99::pick(index).rgb();
        RGBColor(r, g, b)
    })
}

/// `roc_final.png`: the last round's ROC curves from the histograms.
fn roc_figure(path: &Path, record: &RoundRecord) -> Result<Vec<u8>, ReportError> {
    let mut curves = Vec::new();
    for (index, site) in record.sites.iter().enumerate() {
        site.histogram.check().map_err(|source| ReportError::Histogram {
            path: path.to_path_buf(),
            site: site.site.clone(),
            source,
        })?;
        let label = format!(
            "{} ({}, n = {}): AUC {}",
            site.site,
            site.role,
            site.n_patients,
            auc_with_ci(site.auc, site.auc_ci_lower, site.auc_ci_upper)
        );
        curves.push(Curve {
            label,
            colour: site_colour(index),
            width: 2,
            dashed: false,
            runs: roc_runs(path, &site.site, &site.histogram)?,
        });
    }
    for (name, _, pool) in pools(record) {
        let mut histogram = ScoreHistogram::empty();
        for site_name in &pool.sites {
            let site = record
                .sites
                .iter()
                .find(|site| &site.site == site_name)
                .ok_or_else(|| ReportError::UnknownPooledSite {
                    path: path.to_path_buf(),
                    pool: name,
                    site: site_name.clone(),
                })?;
            histogram
                .merge(&site.histogram)
                .map_err(|source| ReportError::Histogram {
                    path: path.to_path_buf(),
                    site: site_name.clone(),
                    source,
                })?;
        }
        let train = name == POOLED_TRAIN;
        curves.push(Curve {
            label: format!(
                "{name} (n = {}): AUC {}",
                pool.n_patients,
                auc_with_ci(pool.auc, pool.auc_ci_lower, pool.auc_ci_upper)
            ),
            colour: if train {
                POOLED_TRAIN_COLOUR
            } else {
                POOLED_VALIDATION_COLOUR
            },
            width: 3,
            dashed: !train,
            runs: roc_runs(path, name, &histogram)?,
        });
    }
    let caption = format!("ROC curves, round {} (study {})", record.round, record.study);
    let figure = Figure {
        file: ROC_FIGURE,
        size: ROC_FIGURE_SIZE,
        caption: &caption,
        x_label: "1 − specificity",
        y_label: "sensitivity",
        x_range: 0.0..1.0,
        y_range: 0.0..1.0,
        reference: [(0.0, 0.0), (1.0, 1.0)],
        integer_x: false,
    };
    draw_figure(figure, &curves)
}

/// The ROC curve as one run; none without both classes (the legend says the AUC is undefined).
fn roc_runs(
    path: &Path,
    site: &str,
    histogram: &ScoreHistogram,
) -> Result<Vec<Vec<(f64, f64)>>, ReportError> {
    if histogram.n_positive() == 0 || histogram.n_negative() == 0 {
        return Ok(Vec::new());
    }
    let points = histogram.roc().map_err(|source| ReportError::Roc {
        path: path.to_path_buf(),
        site: site.to_owned(),
        source,
    })?;
    Ok(vec![points.iter().map(|point| (point.fpr, point.tpr)).collect()])
}

/// `auc_by_round.png`: AUC per round of each site (in order of first appearance) and both pools.
fn auc_figure(records: &[&RoundRecord]) -> Result<Vec<u8>, ReportError> {
    let mut site_names: Vec<(&str, SiteRole)> = Vec::new();
    for site in records.iter().flat_map(|record| &record.sites) {
        if !site_names.iter().any(|(name, _)| *name == site.site) {
            site_names.push((&site.site, site.role));
        }
    }
    let series = |value_of: &dyn Fn(&RoundRecord) -> Option<f64>| -> Vec<Vec<(f64, f64)>> {
        let mut runs: Vec<Vec<(f64, f64)>> = Vec::new();
        let mut previous_defined = false;
        for record in records {
            match value_of(record) {
                Some(auc) if auc.is_finite() => {
                    let point = (record.round as f64, auc);
                    match runs.last_mut() {
                        Some(run) if previous_defined => run.push(point),
                        _ => runs.push(vec![point]),
                    }
                    previous_defined = true;
                }
                _ => previous_defined = false,
            }
        }
        runs
    };
    let mut curves = Vec::new();
    for (index, (name, role)) in site_names.iter().enumerate() {
        curves.push(Curve {
            label: format!("{name} ({role})"),
            colour: site_colour(index),
            width: 2,
            dashed: false,
            runs: series(&|record| {
                record
                    .sites
                    .iter()
                    .find(|site| site.site == *name)
                    .and_then(|site| site.auc)
            }),
        });
    }
    curves.push(Curve {
        label: POOLED_TRAIN.to_owned(),
        colour: POOLED_TRAIN_COLOUR,
        width: 3,
        dashed: false,
        runs: series(&|record| record.pooled_train_sites.as_ref().and_then(|pool| pool.auc)),
    });
    curves.push(Curve {
        label: POOLED_VALIDATION.to_owned(),
        colour: POOLED_VALIDATION_COLOUR,
        width: 3,
        dashed: true,
        runs: series(&|record| record.pooled_validation_sites.as_ref().and_then(|pool| pool.auc)),
    });

    let lowest = curves
        .iter()
        .flat_map(|curve| curve.runs.iter().flatten())
        .map(|point| point.1)
        .fold(0.5_f64, f64::min);
    let y_low = ((lowest - 0.05) * 10.0).floor().max(0.0) / 10.0;
    let last_round = records.last().map_or(0.0, |record| record.round as f64);
    let caption = match records.last() {
        Some(record) => format!("AUC by round (study {})", record.study),
        None => "AUC by round".to_owned(),
    };
    let figure = Figure {
        file: AUC_FIGURE,
        size: AUC_FIGURE_SIZE,
        caption: &caption,
        x_label: "round",
        y_label: "AUC",
        x_range: -0.25..last_round + 0.25,
        y_range: y_low..1.0,
        reference: [(-0.25, 0.5), (last_round + 0.25, 0.5)],
        integer_x: true,
    };
    draw_figure(figure, &curves)
}

/// The frame of a figure: everything but its curves.
struct Figure<'a> {
    file: &'static str,
    size: (u32, u32),
    caption: &'a str,
    x_label: &'a str,
    y_label: &'a str,
    x_range: std::ops::Range<f64>,
    y_range: std::ops::Range<f64>,
    /// The reference line (chance), dashed grey.
    reference: [(f64, f64); 2],
    /// Label only the integer x values (rounds).
    integer_x: bool,
}

/// Draws a line chart with its reference line and a legend panel on the right, and returns it encoded
/// as PNG.
fn draw_figure(figure: Figure<'_>, curves: &[Curve]) -> Result<Vec<u8>, ReportError> {
    let Figure {
        file,
        size: (width, height),
        caption,
        x_label,
        y_label,
        x_range,
        y_range,
        reference,
        integer_x,
    } = figure;
    register_font()?;
    let draw_error = |error: &dyn std::fmt::Display| ReportError::Draw {
        file,
        message: error.to_string(),
    };
    let mut pixels = vec![255_u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| draw_error(&e))?;
        let (plot_area, legend_area) = root.split_horizontally(height.min(width * 2 / 3));
        let last_x = x_range.end;
        let mut chart = ChartBuilder::on(&plot_area)
            .caption(caption, (FONT_FAMILY, 26))
            .margin(20)
            .x_label_area_size(60)
            .y_label_area_size(80)
            .build_cartesian_2d(x_range, y_range)
            .map_err(|e| draw_error(&e))?;
        let x_formatter = |x: &f64| {
            if !integer_x {
                format!("{x:.1}")
            } else if (x - x.round()).abs() < 1e-9 && *x >= 0.0 && *x <= last_x {
                format!("{x:.0}")
            } else {
                String::new()
            }
        };
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .axis_desc_style((FONT_FAMILY, 22))
            .label_style((FONT_FAMILY, 17))
            .x_label_formatter(&x_formatter)
            .y_label_formatter(&|y: &f64| format!("{y:.1}"))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(|e| draw_error(&e))?;
        chart
            .draw_series(DashedLineSeries::new(
                reference.iter().copied(),
                8,
                6,
                REFERENCE_COLOUR.stroke_width(1),
            ))
            .map_err(|e| draw_error(&e))?;
        for curve in curves {
            let style = curve.colour.stroke_width(curve.width);
            for run in &curve.runs {
                if curve.dashed {
                    chart
                        .draw_series(DashedLineSeries::new(run.iter().copied(), 10, 6, style))
                        .map_err(|e| draw_error(&e))?;
                } else {
                    chart
                        .draw_series(LineSeries::new(run.iter().copied(), style))
                        .map_err(|e| draw_error(&e))?;
                }
                if integer_x {
                    chart
                        .draw_series(
                            run.iter()
                                .map(|&point| Circle::new(point, 4, curve.colour.filled())),
                        )
                        .map_err(|e| draw_error(&e))?;
                }
            }
        }

        // The legend: one entry per curve, a line sample and its label; closer and smaller for many
        // curves, so that 50 sites still fit the figure's height.
        let top = 90;
        let room = i32::try_from(height).unwrap_or(i32::MAX).saturating_sub(top + 20);
        let step = (room / i32::try_from(curves.len().max(1)).unwrap_or(i32::MAX)).clamp(10, 34);
        let font_size = (step / 2).clamp(9, 17);
        let mut y = top;
        for curve in curves {
            let sample = [(10, y), (50, y)];
            let style = curve.colour.stroke_width(curve.width);
            if curve.dashed {
                legend_area
                    .draw(&plotters::element::DashedPathElement::new(sample, 8, 5, style))
                    .map_err(|e| draw_error(&e))?;
            } else {
                legend_area
                    .draw(&PathElement::new(sample, style))
                    .map_err(|e| draw_error(&e))?;
            }
            let text_style = TextStyle::from((FONT_FAMILY, font_size).into_font()).pos(
                plotters::style::text_anchor::Pos::new(
                    plotters::style::text_anchor::HPos::Left,
                    plotters::style::text_anchor::VPos::Center,
                ),
            );
            legend_area
                .draw(&Text::new(curve.label.clone(), (60, y), text_style))
                .map_err(|e| draw_error(&e))?;
            y += step;
        }
        root.present().map_err(|e| draw_error(&e))?;
    }
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(&pixels, width, height, image::ExtendedColorType::Rgb8)
        .map_err(|source| ReportError::Png { file, source })?;
    Ok(png)
}

// ---------------------------------------------------------------------------------------------------
// Small helpers

/// The pools that exist in a round, with their row name and the role of the sites they pool.
fn pools(record: &RoundRecord) -> impl Iterator<Item = (&'static str, SiteRole, &PooledMetrics)> {
    [
        (POOLED_TRAIN, SiteRole::Train, record.pooled_train_sites.as_ref()),
        (
            POOLED_VALIDATION,
            SiteRole::Validate,
            record.pooled_validation_sites.as_ref(),
        ),
    ]
    .into_iter()
    .filter_map(|(name, role, pool)| pool.map(|pool| (name, role, pool)))
}

/// n_positive / n_patients of a pool; undefined without patients.
fn pooled_lnm_rate(pool: &PooledMetrics) -> Option<f64> {
    (pool.n_patients > 0).then(|| pool.n_positive as f64 / pool.n_patients as f64)
}

fn aggregation_name(record: &RoundRecord) -> String {
    match record.aggregation {
        fedlnm_shared::federation::AggregationKind::Plain => "plain",
        fedlnm_shared::federation::AggregationKind::Secure => "secure",
    }
    .to_owned()
}

/// A CSV cell: the shortest representation that reads back to the same f64; empty when undefined
/// (or not finite, which the records never hold for a defined value).
fn number(value: Option<f64>) -> String {
    value
        .filter(|value| value.is_finite())
        .map(|value| value.to_string())
        .unwrap_or_default()
}

/// Three decimals, or an em dash when undefined.
fn fixed(value: Option<f64>) -> String {
    value.map_or_else(|| "—".to_owned(), |value| format!("{value:.3}"))
}

fn percent(value: Option<f64>) -> String {
    value.map_or_else(|| "—".to_owned(), |value| format!("{:.1}%", 100.0 * value))
}

/// `0.812 (0.741–0.883)`, `0.812 (CI undefined)` or `undefined (one class)`.
fn auc_with_ci(auc: Option<f64>, lower: Option<f64>, upper: Option<f64>) -> String {
    match (auc, lower, upper) {
        (Some(auc), Some(lower), Some(upper)) => format!("{auc:.3} ({lower:.3}–{upper:.3})"),
        (Some(auc), _, _) => format!("{auc:.3} (CI undefined)"),
        (None, _, _) => "undefined (one class)".to_owned(),
    }
}

fn short_digest(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_round_folders_are_recognised_by_name() {
        let cases: [(&str, Option<u64>); 9] = [
            ("round-0000", Some(0)),
            ("round-0012", Some(12)),
            ("round-12345", Some(12_345)),
            ("round-012", None),
            ("round-12", None),
            (".round-0003.partial", None),
            ("round-0003.partial", None),
            ("round-+123", None),
            ("global.safetensors", None),
        ];
        for (name, expected) in cases {
            assert_eq!(committed_round_number(name), expected, "{name}");
        }
    }

    /// The embedded font draws text with no system font: a label alone leaves dark pixels.
    #[test]
    fn the_embedded_font_draws_text() {
        register_font().unwrap();
        let (width, height) = (200_u32, 60_u32);
        let mut pixels = vec![255_u8; (width * height * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut pixels, (width, height)).into_drawing_area();
            root.draw(&Text::new(
                "1 − specificity",
                (5, 15),
                (FONT_FAMILY, 24).into_font(),
            ))
            .unwrap();
            root.present().unwrap();
        }
        let dark = pixels
            .chunks(3)
            .filter(|pixel| pixel.iter().all(|&c| c < 100))
            .count();
        assert!(dark > 100, "only {dark} dark pixels: no text was drawn");
    }

    #[test]
    fn numbers_are_written_round_trip_or_empty() {
        assert_eq!(number(Some(0.1)), "0.1");
        assert_eq!(number(Some(1.0 / 3.0)).parse::<f64>().unwrap(), 1.0 / 3.0);
        assert_eq!(number(None), "");
        assert_eq!(number(Some(f64::NAN)), "");
        assert_eq!(
            auc_with_ci(Some(0.8123), Some(0.74), Some(0.9)),
            "0.812 (0.740–0.900)"
        );
        assert_eq!(auc_with_ci(None, None, None), "undefined (one class)");
    }
}
