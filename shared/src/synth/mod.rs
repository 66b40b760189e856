//! Synthetic multicentre cohorts: patients, colour Doppler pictures, reports and pathology labels that
//! follow clinical.md, written as a site folder in the format the loader reads (PNG or DICOM), with the
//! oracle AUCs in `synth_summary.json`.
//!
//! Deterministic: the same configuration and seed give byte-identical files (ChaCha8 streams only).

pub mod cohort;
pub mod dicom;
mod font;
pub mod oracle;
pub mod profile;
pub mod render;
pub mod text;

pub use cohort::{Covariate, PatientTruth, TrueLnmModel, covariate_values};
pub use oracle::OracleAucs;
pub use profile::{PROFILE_NAMES, SiteProfile};

use crate::data::ManifestError;
use crate::data::manifest::{IMAGES_DIR, PatientRecord, write_manifest};
use image::RgbImage;
use rand::{Rng as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// File name of the generator's summary inside the site folder.
pub const SUMMARY_FILE: &str = "synth_summary.json";

/// The image file format the generator writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum OutputFormat {
    Png,
    Dicom,
}

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthConfig {
    pub site: String,
    pub n_patients: usize,
    pub seed: u64,
    pub profile: SiteProfile,
    pub format: OutputFormat,
    /// Side of the square pictures (256 by default).
    pub image_size: u32,
}

/// What can go wrong while generating.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("cannot write {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("cannot encode {}: {message}", path.display())]
    Encode { path: PathBuf, message: String },
    #[error(
        "the cohort of {n_patients} patients has a single LNM class; oracle AUCs are undefined (use more patients)"
    )]
    SingleClass { n_patients: usize },
}

/// One generated patient: the truth and the manifest record (report with reader noise, labels).
#[derive(Debug, Clone)]
pub struct SynthPatient {
    pub truth: PatientTruth,
    pub record: PatientRecord,
}

/// A generated cohort, before any file is written.
#[derive(Debug, Clone)]
pub struct Cohort {
    pub model: TrueLnmModel,
    pub patients: Vec<SynthPatient>,
}

impl Cohort {
    /// The true-model covariate values of every patient (rows in patient order, columns in
    /// [`Covariate::ALL`] order) and their LNM labels: the design matrix to check that logistic
    /// regression recovers [`TrueLnmModel::coefficients`].
    #[must_use]
    pub fn design(&self) -> (Vec<[f64; 10]>, Vec<bool>) {
        self.patients
            .iter()
            .map(|p| (covariate_values(&p.truth), p.truth.lnm))
            .unzip()
    }
}

/// The summary written next to the manifest.
#[derive(Debug, Clone, Serialize)]
pub struct SynthSummary {
    pub site: String,
    pub profile: SiteProfile,
    pub seed: u64,
    pub n_patients: usize,
    pub format: OutputFormat,
    pub image_size: u32,
    pub lnm_rate: f64,
    pub central_lnm_rate: f64,
    pub lateral_lnm_rate: f64,
    pub oracle_auc: OracleAucs,
    pub true_model_intercept: f64,
    pub true_model_coefficients: BTreeMap<&'static str, f64>,
    pub true_model_odds_ratios: BTreeMap<&'static str, f64>,
    /// Which AUC implementation computed `oracle_auc`.
    pub auc_method: &'static str,
}

/// Draws the cohort (truth, reports, labels) without writing anything.
#[must_use]
pub fn generate_cohort(config: &SynthConfig) -> Cohort {
    let model = TrueLnmModel::for_profile(&config.profile);
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed ^ fnv1a(config.site.as_bytes()));
    let extension = match config.format {
        OutputFormat::Png => "png",
        OutputFormat::Dicom => "dcm",
    };
    let patients = (1..=config.n_patients)
        .map(|index| {
            let patient_id = format!("{}-{index:05}", config.site);
            let truth = cohort::draw_truth(patient_id.clone(), &config.profile, &model, &mut rng);
            let report = cohort::write_report(&truth, &config.profile, &mut rng);
            let record = PatientRecord {
                image_files: vec![format!("{patient_id}.{extension}")],
                patient_id,
                image_frame: 0,
                clinical: truth.clinical(),
                report,
                labels: Some(truth.labels()),
            };
            SynthPatient { truth, record }
        })
        .collect();
    Cohort { model, patients }
}

/// Renders one patient's picture.
#[must_use]
pub fn render_patient(patient: &SynthPatient, config: &SynthConfig) -> RgbImage {
    render::render(&patient.truth, &config.profile, &config.site, config.image_size)
}

/// Generates a site folder: `patients.csv`, `images/`, `synth_summary.json`. Returns the summary.
pub fn write_site(config: &SynthConfig, out_dir: &Path) -> Result<SynthSummary, SynthError> {
    let started = std::time::Instant::now();
    let cohort = generate_cohort(config);
    let summary = summarise(config, &cohort)?;
    let images_dir = out_dir.join(IMAGES_DIR);
    std::fs::create_dir_all(&images_dir).map_err(|source| SynthError::Io {
        path: images_dir.clone(),
        source,
    })?;
    for patient in &cohort.patients {
        let picture = render_patient(patient, config);
        let path = images_dir.join(&patient.record.image_files[0]);
        match config.format {
            OutputFormat::Png => picture
                .save_with_format(&path, image::ImageFormat::Png)
                .map_err(|e| SynthError::Encode {
                    path: path.clone(),
                    message: e.to_string(),
                })?,
            OutputFormat::Dicom => {
                let uid_seed = (u128::from(patient.truth.render_seed) << 32)
                    | u128::from(fnv1a(config.site.as_bytes()) as u32);
                dicom::write_dicom(&path, &picture, &patient.record.patient_id, uid_seed).map_err(
                    |error| SynthError::Encode {
                        path: path.clone(),
                        message: error.to_string(),
                    },
                )?;
            }
        }
    }
    let records: Vec<PatientRecord> = cohort.patients.iter().map(|p| p.record.clone()).collect();
    write_manifest(out_dir, &records)?;
    let summary_path = out_dir.join(SUMMARY_FILE);
    let json = serde_json::to_string_pretty(&summary).map_err(|e| SynthError::Encode {
        path: summary_path.clone(),
        message: e.to_string(),
    })?;
    std::fs::write(&summary_path, json + "\n").map_err(|source| SynthError::Io {
        path: summary_path,
        source,
    })?;
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(
        site = %config.site,
        profile = config.profile.name,
        patients = config.n_patients,
        lnm_rate = summary.lnm_rate,
        oracle_multimodal = summary.oracle_auc.multimodal,
        oracle_report_clinical = summary.oracle_auc.report_clinical,
        oracle_image = summary.oracle_auc.image,
        seconds,
        "synthetic site written"
    );
    Ok(summary)
}

/// The summary of a cohort (rates, oracle AUCs, the true model).
pub fn summarise(config: &SynthConfig, cohort: &Cohort) -> Result<SynthSummary, SynthError> {
    let pairs: Vec<(PatientTruth, crate::data::report::UltrasoundReport)> = cohort
        .patients
        .iter()
        .map(|p| (p.truth.clone(), p.record.report.clone()))
        .collect();
    let oracle_auc = oracle::oracle_aucs(&cohort.model, &pairs).ok_or(SynthError::SingleClass {
        n_patients: config.n_patients,
    })?;
    let rate = |f: fn(&PatientTruth) -> bool| {
        cohort.patients.iter().filter(|p| f(&p.truth)).count() as f64 / cohort.patients.len().max(1) as f64
    };
    Ok(SynthSummary {
        site: config.site.clone(),
        profile: config.profile.clone(),
        seed: config.seed,
        n_patients: config.n_patients,
        format: config.format,
        image_size: config.image_size,
        lnm_rate: rate(|t| t.lnm),
        central_lnm_rate: rate(|t| t.lnm_central),
        lateral_lnm_rate: rate(|t| t.lnm_lateral),
        oracle_auc,
        true_model_intercept: cohort.model.intercept,
        true_model_coefficients: cohort
            .model
            .coefficients
            .iter()
            .map(|(c, b)| (c.name(), *b))
            .collect(),
        true_model_odds_ratios: cohort
            .model
            .coefficients
            .iter()
            .map(|(c, b)| (c.name(), b.exp()))
            .collect(),
        auc_method: "stats::binary::auc_delong (Mann-Whitney, ties count one half)",
    })
}

/// A contact sheet: one row per profile, `per_class` LNM+ pictures then `per_class` LNM- pictures,
/// separated by a gap, each `tile` pixels square.
#[must_use]
pub fn contact_sheet(profiles: &[SiteProfile], per_class: usize, tile: u32, seed: u64) -> RgbImage {
    let gap = 6;
    let columns = 2 * per_class as u32;
    let width = columns * tile + (columns + 2) * gap;
    let height = profiles.len() as u32 * (tile + gap) + gap;
    let mut sheet = RgbImage::from_pixel(width, height, image::Rgb([40, 40, 48]));
    for (row, profile) in profiles.iter().enumerate() {
        let config = SynthConfig {
            site: format!("S{}", row + 1),
            n_patients: 60,
            seed,
            profile: profile.clone(),
            format: OutputFormat::Png,
            image_size: tile,
        };
        let cohort = generate_cohort(&config);
        let positives = cohort.patients.iter().filter(|p| p.truth.lnm).take(per_class);
        let negatives = cohort.patients.iter().filter(|p| !p.truth.lnm).take(per_class);
        for (column, patient) in positives.chain(negatives).enumerate() {
            let column = column as u32;
            let extra_gap = if column >= per_class as u32 { 2 * gap } else { gap };
            let x = gap + column * (tile + gap) + extra_gap - gap;
            let y = gap + row as u32 * (tile + gap);
            image::imageops::replace(
                &mut sheet,
                &render_patient(patient, &config),
                i64::from(x),
                i64::from(y),
            );
        }
    }
    sheet
}

/// FNV-1a, to derive a per-site stream from one seed.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Draws a fresh seed from a stream (used by callers that need independent sub-streams).
#[must_use]
pub fn next_seed(rng: &mut ChaCha8Rng) -> u64 {
    rng.random()
}
